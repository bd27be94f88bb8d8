//! Test support: hostile layer tars built byte for byte, with names the
//! `tar` crate's builder would refuse (`..`, absolute paths), for escape
//! tests of anything that applies layers. Each layer must fail to apply with
//! an InvalidArgument error naming [`HostileLayer::bad_entry`], and must not
//! change anything outside the target root.
//!
//! The layers aim at names a test can watch: `berth-escape*` next to or
//! above the root, `/etc/passwd` (hard links), a file `outside` in the
//! root's parent directory, `/dev`, `/tmp`. Tests should put the root at
//! least three levels below their sandbox (`sandbox/a/b/root`) so that
//! `../../..` stays inside the sandbox.

use std::io;

use crate::writer::{TarEntry, TarWriter};

/// One hostile layer (an uncompressed tar).
#[derive(Debug, Clone)]
pub struct HostileLayer {
    /// Short identifier, e.g. `dotdot-file`.
    pub name: &'static str,
    /// What the layer tries to do.
    pub attack: &'static str,
    /// The tar bytes.
    pub bytes: Vec<u8>,
    /// The entry name the apply error must contain.
    pub bad_entry: &'static str,
}

/// Builds layers entry by entry; names and link targets are written as
/// given. Also handy for well-formed test layers.
pub struct LayerBuilder {
    tw: TarWriter<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tw: TarWriter::new(Vec::new()),
        }
    }

    /// Any entry with its data (`data.len()` must equal `entry.size`).
    pub fn entry(mut self, entry: TarEntry, data: &[u8]) -> LayerBuilder {
        // Writing into a Vec cannot fail; a size mismatch is a bug in the test.
        if let Err(e) = self.tw.append(&entry, data) {
            panic!(
                "LayerBuilder: entry {:?}: {e}",
                String::from_utf8_lossy(&entry.name)
            );
        }
        self
    }

    pub fn dir(self, name: &str) -> LayerBuilder {
        self.entry(TarEntry::dir(name), b"")
    }

    pub fn file(self, name: &str, data: &[u8]) -> LayerBuilder {
        self.entry(TarEntry::file(name, data.len() as u64), data)
    }

    pub fn symlink(self, name: &str, target: &str) -> LayerBuilder {
        self.entry(TarEntry::symlink(name, target), b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> LayerBuilder {
        self.entry(TarEntry::hardlink(name, target), b"")
    }

    /// `<dir>/.wh.<name>`.
    pub fn whiteout(self, path: &str) -> LayerBuilder {
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), path),
        };
        self.entry(TarEntry::file(format!("{dir}.wh.{base}"), 0), b"")
    }

    /// `<dir>/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> LayerBuilder {
        let name = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{}/.wh..wh..opq", dir.trim_end_matches('/'))
        };
        self.entry(TarEntry::file(name, 0), b"")
    }

    /// A header declaring `entry.size` bytes followed by only `data`, and
    /// the end of the stream (no padding, no end marker).
    pub fn truncated_entry(mut self, entry: TarEntry, data: &[u8]) -> Vec<u8> {
        let r: io::Result<()> = (|| {
            self.tw.append_header(&entry)?;
            self.tw.write_raw(data)
        })();
        if let Err(e) = r {
            panic!("LayerBuilder: {e}");
        }
        self.tw.get_mut().clone()
    }

    /// Raw bytes (whole 512-byte blocks) appended to the archive.
    fn raw(mut self, bytes: &[u8]) -> LayerBuilder {
        self.tw.get_mut().extend_from_slice(bytes);
        self
    }

    /// The archive so far plus raw bytes, without an end marker.
    pub fn raw_tail(mut self, bytes: &[u8]) -> Vec<u8> {
        self.tw.get_mut().extend_from_slice(bytes);
        self.tw.get_mut().clone()
    }

    /// The archive with its end-of-archive marker.
    pub fn finish(self) -> Vec<u8> {
        match self.tw.finish() {
            Ok(v) => v,
            Err(e) => panic!("LayerBuilder: {e}"),
        }
    }
}

fn layer(
    name: &'static str,
    attack: &'static str,
    bad_entry: &'static str,
    bytes: Vec<u8>,
) -> HostileLayer {
    HostileLayer {
        name,
        attack,
        bytes,
        bad_entry,
    }
}

/// The hostile corpus.
pub fn hostile_layers() -> Vec<HostileLayer> {
    let b = LayerBuilder::new;
    let long_tail = "x".repeat(150);
    let long_escape: &'static str =
        Box::leak(format!("../berth-escape-{long_tail}").into_boxed_str());

    let longname = b"../berth-escape-gnu\0";
    let mut longname_entry = TarEntry::other("././@LongLink", b'L');
    longname_entry.size = longname.len() as u64;
    let gnu = b()
        .entry(longname_entry, longname)
        .file("placeholder", b"gnu long name escape");

    let mut pax_link = TarEntry::hardlink("pax-link", "innocent");
    pax_link
        .pax
        .push(("linkpath".into(), b"../outside".to_vec()));

    vec![
        layer(
            "dotdot-file",
            "a file named ../x",
            "../berth-escape",
            b().file("../berth-escape", b"escaped").finish(),
        ),
        layer(
            "absolute-file",
            "a file with an absolute name",
            "/abs/berth-escape",
            b().file("/abs/berth-escape", b"escaped").finish(),
        ),
        layer(
            "nested-dotdot",
            "a name that climbs above the root through a directory",
            "a/../../berth-escape",
            b().dir("a/")
                .file("a/../../berth-escape", b"escaped")
                .finish(),
        ),
        layer(
            "long-pax-dotdot",
            "a PAX long name that starts with ../",
            "../berth-escape-xxxx",
            b().file(long_escape, b"escaped").finish(),
        ),
        layer(
            "gnu-longname-dotdot",
            "a GNU long name that starts with ../",
            "../berth-escape-gnu",
            gnu.finish(),
        ),
        layer(
            "symlink-root-then-write",
            "symlink evil -> / then a file through it",
            "evil/etc/berth-escape",
            b().symlink("evil", "/")
                .file("evil/etc/berth-escape", b"escaped")
                .finish(),
        ),
        layer(
            "symlink-dotdot-then-write",
            "symlink evil -> ../../.. then a file through it",
            "evil/berth-escape",
            b().symlink("evil", "../../..")
                .file("evil/berth-escape", b"escaped")
                .finish(),
        ),
        layer(
            "symlink-then-mkdir",
            "symlink evil -> /tmp then a directory through it",
            "evil/berth-escape-dir/",
            b().symlink("evil", "/tmp")
                .dir("evil/berth-escape-dir/")
                .finish(),
        ),
        layer(
            "dir-replaced-by-symlink",
            "directory a, replaced by symlink a -> .., then a file in a/",
            "a/berth-escape",
            b().dir("a/")
                .symlink("a", "..")
                .file("a/berth-escape", b"escaped")
                .finish(),
        ),
        layer(
            "hardlink-absolute",
            "hard link to /etc/passwd",
            "passwd-link",
            b().hardlink("passwd-link", "/etc/passwd").finish(),
        ),
        layer(
            "hardlink-dotdot",
            "hard link to ../outside",
            "outside-link",
            b().hardlink("outside-link", "../outside").finish(),
        ),
        layer(
            "hardlink-pax-linkpath",
            "hard link whose PAX linkpath is ../outside",
            "pax-link",
            b().file("innocent", b"x").entry(pax_link, b"").finish(),
        ),
        layer(
            "hardlink-through-symlink",
            "symlink evil -> /etc then a hard link to evil/passwd",
            "shadow-link",
            b().symlink("evil", "/etc")
                .hardlink("shadow-link", "evil/passwd")
                .finish(),
        ),
        layer(
            "hardlink-through-dotdot-symlink",
            "symlink up -> ../.. then a hard link to up/outside",
            "up-link",
            b().symlink("up", "../..")
                .hardlink("up-link", "up/l2/outside")
                .finish(),
        ),
        layer(
            "hardlink-to-directory",
            "hard link to a directory",
            "dir-link",
            b().dir("d/").hardlink("dir-link", "d").finish(),
        ),
        layer(
            "symlink-loop",
            "symlinks a -> b, b -> a, then a/x",
            "a/x",
            b().symlink("a", "b")
                .symlink("b", "a")
                .file("a/x", b"loop")
                .finish(),
        ),
        layer(
            "huge-truncated",
            "a file declaring 1 TiB followed by 64 KiB and the end of the stream",
            "huge",
            b().truncated_entry(TarEntry::file("huge", 1 << 40), &vec![0xab; 64 << 10]),
        ),
        layer(
            "truncated-data",
            "a file declaring 10000 bytes followed by 3000",
            "cut-short",
            b().file("ok-file", b"fine")
                .truncated_entry(TarEntry::file("cut-short", 10_000), &[7u8; 3000]),
        ),
        layer(
            "truncated-header",
            "an archive cut in the middle of a header",
            "ok-file",
            b().file("ok-file", b"fine").raw_tail(&truncated_header()),
        ),
        layer(
            "whiteout-dotdot",
            "a whiteout .wh... naming '..'",
            ".wh...",
            b().dir("a/")
                .entry(TarEntry::file("a/.wh...", 0), b"")
                .finish(),
        ),
        layer(
            "whiteout-escape",
            "a whiteout whose name climbs above the root",
            "../.wh.outside",
            b().entry(TarEntry::file("../.wh.outside", 0), b"").finish(),
        ),
        layer(
            "whiteout-through-symlink",
            "symlink evil -> ../../.. then evil/.wh.outside",
            "evil/.wh.canary",
            b().symlink("evil", "../../..")
                .whiteout("evil/canary")
                .finish(),
        ),
        layer(
            "opaque-through-symlink",
            "symlink evil -> / then evil/.wh..wh..opq",
            "evil/.wh..wh..opq",
            b().symlink("evil", "/").opaque("evil").finish(),
        ),
        layer(
            "device-through-symlink",
            "symlink evil -> /dev then a character device evil/berth-null",
            "evil/berth-null",
            b().symlink("evil", "/dev")
                .entry(TarEntry::char_device("evil/berth-null", 1, 3), b"")
                .finish(),
        ),
        layer(
            "fifo-through-symlink",
            "symlink evil -> ../../.. then a fifo through it",
            "evil/berth-escape-fifo",
            b().symlink("evil", "../../..")
                .entry(TarEntry::fifo("evil/berth-escape-fifo"), b"")
                .finish(),
        ),
        layer(
            "unsupported-type",
            "an entry of type 'V' (volume label)",
            "volume-label",
            b().entry(TarEntry::other("volume-label", b'V'), b"")
                .finish(),
        ),
        layer(
            "gnu-sparse",
            "a GNU sparse file",
            "sparse-file",
            b().raw(&gnu_sparse_header("sparse-file")).finish(),
        ),
    ]
}

/// A GNU-format header of type 'S' (sparse) with no data.
fn gnu_sparse_header(name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.realsize.copy_from_slice(b"00000000000\0");
    }
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(0);
    h.set_mtime(0);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// 200 bytes of a valid-looking header: the archive ends inside it.
fn truncated_header() -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new());
    let _ = w.append_header(&TarEntry::file("never-complete", 5));
    let mut v = w.get_mut().clone();
    v.truncate(200);
    v
}
