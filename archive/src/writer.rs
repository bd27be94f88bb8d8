//! A small tar writer that writes names byte for byte (ustar with PAX
//! records for long names, big numbers and xattrs), for layers made by
//! [`crate::diff`] and for the hostile archives of [`crate::corpus`], whose
//! names the `tar` crate's builder would refuse.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// The type of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    /// Any other type flag, written as is.
    Other(u8),
}

impl EntryKind {
    fn flag(self) -> u8 {
        match self {
            EntryKind::File => b'0',
            EntryKind::HardLink => b'1',
            EntryKind::Symlink => b'2',
            EntryKind::Char => b'3',
            EntryKind::Block => b'4',
            EntryKind::Dir => b'5',
            EntryKind::Fifo => b'6',
            EntryKind::Other(b) => b,
        }
    }
}

/// One entry's header. `size` is what the header declares; the data passed
/// to [`TarWriter::append`] must have exactly that many bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub link: Vec<u8>,
    pub major: u32,
    pub minor: u32,
    /// Written as PAX `SCHILY.xattr.<key>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Extra PAX records written as they are.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl TarEntry {
    fn new(name: impl AsRef<[u8]>, kind: EntryKind, mode: u32) -> TarEntry {
        TarEntry {
            name: name.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: Vec::new(),
            major: 0,
            minor: 0,
            xattrs: Vec::new(),
            pax: Vec::new(),
        }
    }

    /// A regular file of `size` bytes, mode 0644.
    pub fn file(name: impl AsRef<[u8]>, size: u64) -> TarEntry {
        TarEntry {
            size,
            ..TarEntry::new(name, EntryKind::File, 0o644)
        }
    }

    /// A directory, mode 0755. Conventionally the name ends with `/`.
    pub fn dir(name: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(name, EntryKind::Dir, 0o755)
    }

    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
        TarEntry {
            link: target.as_ref().to_vec(),
            ..TarEntry::new(name, EntryKind::Symlink, 0o777)
        }
    }

    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
        TarEntry {
            link: target.as_ref().to_vec(),
            ..TarEntry::new(name, EntryKind::HardLink, 0o644)
        }
    }

    pub fn char_device(name: impl AsRef<[u8]>, major: u32, minor: u32) -> TarEntry {
        TarEntry {
            major,
            minor,
            ..TarEntry::new(name, EntryKind::Char, 0o666)
        }
    }

    pub fn block_device(name: impl AsRef<[u8]>, major: u32, minor: u32) -> TarEntry {
        TarEntry {
            major,
            minor,
            ..TarEntry::new(name, EntryKind::Block, 0o660)
        }
    }

    pub fn fifo(name: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(name, EntryKind::Fifo, 0o644)
    }

    /// An empty entry with any type flag.
    pub fn other(name: impl AsRef<[u8]>, flag: u8) -> TarEntry {
        TarEntry::new(name, EntryKind::Other(flag), 0o644)
    }

    pub fn mode(mut self, mode: u32) -> TarEntry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> TarEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: i64) -> TarEntry {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, key: &str, value: impl AsRef<[u8]>) -> TarEntry {
        self.xattrs.push((key.to_string(), value.as_ref().to_vec()));
        self
    }
}

const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// Writes tar entries to `out`.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Writes the header of `entry`, then exactly `entry.size` bytes from
    /// `data` and the padding. Fails with UnexpectedEof if `data` is shorter.
    pub fn append(&mut self, entry: &TarEntry, data: impl Read) -> io::Result<()> {
        self.append_header(entry)?;
        let mut taken = data.take(entry.size);
        let n = io::copy(&mut taken, &mut self.out)?;
        if n != entry.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry data ended after {n} of {} bytes", entry.size),
            ));
        }
        self.pad(n)
    }

    /// Writes only the header (and PAX records) of `entry`; the caller
    /// writes the data with [`TarWriter::write_raw`].
    pub fn append_header(&mut self, entry: &TarEntry) -> io::Result<()> {
        let mut records = Vec::new();
        let mut header = tar::Header::new_ustar();
        let name_fits = set_name(&mut header, &entry.name);
        if !name_fits {
            pax_record(&mut records, "path", &entry.name);
        }
        if entry.link.len() > 100 {
            pax_record(&mut records, "linkpath", &entry.link);
        }
        if let Some(ustar) = header.as_ustar_mut() {
            let n = entry.link.len().min(100);
            ustar.linkname[..n].copy_from_slice(&entry.link[..n]);
        }
        header.set_entry_type(tar::EntryType::new(entry.kind.flag()));
        header.set_mode(entry.mode);
        if entry.uid <= MAX_OCTAL_7 {
            header.set_uid(entry.uid);
        } else {
            pax_record(&mut records, "uid", entry.uid.to_string().as_bytes());
            header.set_uid(0);
        }
        if entry.gid <= MAX_OCTAL_7 {
            header.set_gid(entry.gid);
        } else {
            pax_record(&mut records, "gid", entry.gid.to_string().as_bytes());
            header.set_gid(0);
        }
        if entry.size <= MAX_OCTAL_11 {
            header.set_size(entry.size);
        } else {
            pax_record(&mut records, "size", entry.size.to_string().as_bytes());
            header.set_size(0);
        }
        match u64::try_from(entry.mtime) {
            Ok(t) if t <= MAX_OCTAL_11 => header.set_mtime(t),
            _ => {
                pax_record(&mut records, "mtime", entry.mtime.to_string().as_bytes());
                header.set_mtime(0);
            }
        }
        if matches!(entry.kind, EntryKind::Char | EntryKind::Block) {
            header.set_device_major(entry.major)?;
            header.set_device_minor(entry.minor)?;
        }
        for (key, value) in &entry.xattrs {
            pax_record(&mut records, &format!("SCHILY.xattr.{key}"), value);
        }
        for (key, value) in &entry.pax {
            pax_record(&mut records, key, value);
        }
        header.set_cksum();
        if !records.is_empty() {
            let mut pax = tar::Header::new_ustar();
            set_name(&mut pax, b"PaxHeaders/entry");
            pax.set_entry_type(tar::EntryType::XHeader);
            pax.set_mode(0o644);
            pax.set_size(records.len() as u64);
            pax.set_mtime(0);
            pax.set_cksum();
            self.out.write_all(pax.as_bytes())?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        self.out.write_all(header.as_bytes())
    }

    /// Writes bytes as they are (data of a header written with
    /// [`TarWriter::append_header`], or deliberately broken archives).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Zero padding up to the next 512-byte block after `len` data bytes.
    pub fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Puts `name` into the ustar name (and prefix) fields byte for byte;
/// returns false when it does not fit, in which case the first 100 bytes
/// are stored and a PAX `path` record must carry the name.
fn set_name(header: &mut tar::Header, name: &[u8]) -> bool {
    let Some(ustar) = header.as_ustar_mut() else {
        return false;
    };
    if name.len() <= 100 {
        ustar.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that the prefix has at most 155 bytes and the rest
    // at most 100 (and is not empty).
    for (i, b) in name.iter().enumerate().rev() {
        if *b != b'/' {
            continue;
        }
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if rest.len() > 100 {
            break;
        }
        if prefix.len() <= 155 && !rest.is_empty() {
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    ustar.name.copy_from_slice(&name[..100]);
    false
}

/// Appends one PAX record `"<len> <key>=<value>\n"`.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"abc");
        assert_eq!(v, b"12 path=abc\n");
        let mut v = Vec::new();
        let long = vec![b'x'; 95];
        pax_record(&mut v, "path", &long);
        assert_eq!(v.len(), 105);
        assert!(v.starts_with(b"105 path="));
    }

    #[test]
    fn round_trip_with_tar_crate() {
        let long: Vec<u8> = [&b"dir/"[..], &[b'n'; 200]].concat();
        let mut w = TarWriter::new(Vec::new());
        w.append(&TarEntry::dir("dir/"), io::empty()).unwrap();
        w.append(
            &TarEntry::file(&long, 3)
                .owner(5_000_000, 7)
                .mtime(-5)
                .xattr("user.k", b"v\0x"),
            &b"abc"[..],
        )
        .unwrap();
        w.append(&TarEntry::symlink("l", &long), io::empty())
            .unwrap();
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"dir/");
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(e.header().uid().unwrap(), 5_000_000);
        let xattr: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap())
            .filter(|x| x.key().unwrap().starts_with("SCHILY"))
            .map(|x| x.value_bytes().to_vec())
            .collect();
        assert_eq!(xattr, vec![b"v\0x".to_vec()]);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.link_name_bytes().unwrap(), &long[..]);
        assert!(entries.next().is_none());
    }
}
