//! Lexical checks of the names inside a layer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An entry name reduced to its components: no empty, `.` or `..` parts, not
/// absolute. Empty means the root itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RelPath(PathBuf);

impl RelPath {
    /// Cleans a raw name from the archive the way `filepath.Clean` does and
    /// rejects names that are absolute or climb above the root.
    pub(crate) fn clean(raw: &[u8]) -> Result<RelPath, &'static str> {
        if raw.is_empty() {
            return Err("empty name");
        }
        if raw.contains(&0) {
            return Err("name contains a NUL byte");
        }
        if raw[0] == b'/' {
            return Err("absolute name: entries must be relative to the layer root");
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err("name climbs above the layer root with '..'");
                    }
                }
                p => parts.push(p),
            }
        }
        let mut path = PathBuf::new();
        for p in parts {
            path.push(OsStr::from_bytes(p));
        }
        Ok(RelPath(path))
    }

    #[cfg(test)]
    pub(crate) fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }

    /// Parent directory and last component; `None` for the root.
    pub(crate) fn split(&self) -> Option<(&Path, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().unwrap_or(Path::new(""));
        Some((parent, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_rejects() {
        assert_eq!(
            RelPath::clean(b"./a//b/./c/").unwrap().as_path(),
            Path::new("a/b/c")
        );
        assert_eq!(RelPath::clean(b"a/../b").unwrap().as_path(), Path::new("b"));
        assert!(RelPath::clean(b"./").unwrap().is_root());
        assert!(RelPath::clean(b"../x").is_err());
        assert!(RelPath::clean(b"a/../../x").is_err());
        assert!(RelPath::clean(b"/etc/passwd").is_err());
        assert!(RelPath::clean(b"").is_err());
        assert!(RelPath::clean(b"a\0b").is_err());
        let p = RelPath::clean(b"a/b/c").unwrap();
        let (parent, name) = p.split().unwrap();
        assert_eq!(parent, Path::new("a/b"));
        assert_eq!(name, "c");
        let p = RelPath::clean(b"top").unwrap();
        assert_eq!(p.split().unwrap().0, Path::new(""));
    }
}
