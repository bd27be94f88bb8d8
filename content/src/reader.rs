//! Random-access and streaming reads of a committed blob.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{IoContext, Result};

/// An open blob. `read_at` is a positioned read (`pread`) and takes `&self`,
/// so one reader can serve concurrent ranges; `Read`/`Seek` keep their own
/// cursor for streaming.
#[derive(Debug)]
pub struct Reader {
    file: File,
    path: PathBuf,
    size: u64,
    pos: u64,
}

impl Reader {
    pub(crate) fn new(file: File, path: PathBuf, size: u64) -> Reader {
        Reader {
            file,
            path,
            size,
            pos: 0,
        }
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads up to `buf.len()` bytes at `offset`. Returns 0 at or after the
    /// end; may return fewer bytes than asked.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want =
            usize::try_from(self.size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        loop {
            match self.file.read_at(&mut buf[..want], offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.ctx("read", &self.path),
            }
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, buf).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Reader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}
