//! Command line and mount option parsing: the contract with `mount.fuse3` and the snapshotter.
//!
//! `berth-aufs <source> <mountpoint> [-o opt[,opt...]]... [--foreground|-f]`

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What a branch allows, in AUFS terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchMode {
    /// `rw`: the writable top branch; whiteouts honoured and created here.
    Rw,
    /// `ro`: read-only; AUFS does not look for whiteouts on it.
    Ro,
    /// `ro+wh`: read-only with whiteouts and opaque markers that hide lower branches.
    RoWh,
    /// `rr`: natively read-only; no whiteouts either.
    Rr,
}

impl BranchMode {
    /// Whether `.wh.<name>` and `.wh..wh..opq` on this branch hide lower branches.
    pub fn honours_whiteouts(self) -> bool {
        matches!(self, BranchMode::Rw | BranchMode::RoWh)
    }
}

/// One directory of the union, top first in [`Options::branches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub path: PathBuf,
    pub mode: BranchMode,
}

/// The validated invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub source: OsString,
    pub mountpoint: PathBuf,
    pub branches: Vec<Branch>,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub foreground: bool,
    /// Options we did not recognise (ignored, reported as a warning).
    pub ignored: Vec<String>,
}

/// Bad input on the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("usage: berth-aufs <source> <mountpoint> -o br=<dir>=rw:<dir>=ro+wh:... [-o opts] [--foreground]")]
    Usage,
    #[error("unexpected argument {0:?}")]
    UnexpectedArgument(String),
    #[error("-o needs a value")]
    MissingOptionValue,
    #[error("no branches: pass -o br=<dir>[=rw|ro|ro+wh|rr]:<dir>...")]
    NoBranches,
    #[error("br= given more than once")]
    DuplicateBranches,
    #[error("empty branch in br={0:?}")]
    EmptyBranch(String),
    #[error("branch {path:?}: unknown permission {perm:?} (expected rw, ro, ro+wh, rr or rr+wh)")]
    BadPermission { path: String, perm: String },
    #[error("branch {0:?}: only the top (first) branch may be rw")]
    RwNotTop(String),
    #[error("branch {path:?} is not a directory: {reason}")]
    NotADirectory { path: String, reason: String },
    #[error("branch {0:?} appears twice")]
    DuplicateBranch(String),
    #[error("mountpoint {path:?} is not a directory: {reason}")]
    BadMountpoint { path: String, reason: String },
    #[error("option {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

/// Generic mount and FUSE options accepted and ignored (the kernel or mount(8) handles them,
/// or they are implied: we always mount with allow_other,default_permissions).
const IGNORED_GENERIC: &[&str] = &[
    "rw",
    "dev",
    "suid",
    "exec",
    "allow_other",
    "allow_root",
    "default_permissions",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "sync",
    "async",
    "dirsync",
    "lazytime",
    "nolazytime",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "defaults",
    "auto_unmount",
    "kernel_cache",
];

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Options, OptionsError> {
        let mut positional = Vec::new();
        let mut opts = Vec::new();
        let mut foreground = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let bytes = arg.as_bytes();
            if bytes == b"-o" {
                let value = args.next().ok_or(OptionsError::MissingOptionValue)?;
                opts.push(utf8(value)?);
            } else if let Some(rest) = bytes.strip_prefix(b"-o") {
                opts.push(utf8(OsString::from(std::ffi::OsStr::from_bytes(rest)))?);
            } else if bytes == b"-f" || bytes == b"--foreground" {
                foreground = true;
            } else if bytes == b"-h" || bytes == b"--help" {
                return Err(OptionsError::Usage);
            } else if bytes.starts_with(b"-") && bytes.len() > 1 {
                return Err(OptionsError::UnexpectedArgument(
                    arg.to_string_lossy().into_owned(),
                ));
            } else {
                positional.push(arg);
            }
        }
        if positional.len() > 2 {
            return Err(OptionsError::UnexpectedArgument(
                positional[2].to_string_lossy().into_owned(),
            ));
        }
        let mut positional = positional.into_iter();
        let (Some(source), Some(mountpoint)) = (positional.next(), positional.next()) else {
            return Err(OptionsError::Usage);
        };

        let mut parsed = Options {
            source,
            mountpoint: PathBuf::from(mountpoint),
            branches: Vec::new(),
            read_only: false,
            nosuid: false,
            nodev: false,
            noexec: false,
            foreground,
            ignored: Vec::new(),
        };
        let mut br_seen = false;
        for opt in opts.iter().flat_map(|o| o.split(',')) {
            if opt.is_empty() {
                continue;
            }
            if let Some(spec) = opt.strip_prefix("br=").or_else(|| opt.strip_prefix("br:")) {
                if br_seen {
                    return Err(OptionsError::DuplicateBranches);
                }
                br_seen = true;
                parsed.branches = parse_branches(spec)?;
                continue;
            }
            match opt {
                "ro" => parsed.read_only = true,
                "nosuid" => parsed.nosuid = true,
                "nodev" => parsed.nodev = true,
                "noexec" => parsed.noexec = true,
                o if IGNORED_GENERIC.contains(&o) => {}
                // Options mount(8)/mount.fuse3 or fstab may add; harmless here.
                o if o.starts_with("x-")
                    || o.starts_with("fsname=")
                    || o.starts_with("subtype=")
                    || o.starts_with("max_read=")
                    || o.starts_with("context=")
                    || o.starts_with("uid=")
                    || o.starts_with("gid=")
                    || o.starts_with("user_id=")
                    || o.starts_with("group_id=") => {}
                o => parsed.ignored.push(o.to_string()),
            }
        }
        if parsed.branches.is_empty() {
            return Err(OptionsError::NoBranches);
        }
        validate_dirs(&mut parsed)?;
        Ok(parsed)
    }

    /// Whether the union accepts writes: a top `rw` branch and no `ro` option.
    pub fn writable(&self) -> bool {
        !self.read_only && self.branches[0].mode == BranchMode::Rw
    }
}

fn utf8(value: OsString) -> Result<String, OptionsError> {
    value
        .into_string()
        .map_err(|v| OptionsError::NotUtf8(v.to_string_lossy().into_owned()))
}

/// AUFS branch syntax: `dir[=perm]:dir[=perm]...`, top first.
fn parse_branches(spec: &str) -> Result<Vec<Branch>, OptionsError> {
    let mut branches = Vec::new();
    for (i, item) in spec.split(':').enumerate() {
        if item.is_empty() {
            return Err(OptionsError::EmptyBranch(spec.to_string()));
        }
        let (path, perm) = match item.rsplit_once('=') {
            Some((path, perm)) => (path, perm),
            None => (item, "ro"),
        };
        if path.is_empty() {
            return Err(OptionsError::EmptyBranch(spec.to_string()));
        }
        let mode = match perm {
            "rw" => BranchMode::Rw,
            "ro" => BranchMode::Ro,
            "ro+wh" => BranchMode::RoWh,
            "rr" => BranchMode::Rr,
            "rr+wh" => BranchMode::RoWh,
            _ => {
                return Err(OptionsError::BadPermission {
                    path: path.to_string(),
                    perm: perm.to_string(),
                })
            }
        };
        if mode == BranchMode::Rw && i != 0 {
            return Err(OptionsError::RwNotTop(path.to_string()));
        }
        branches.push(Branch {
            path: PathBuf::from(path),
            mode,
        });
    }
    Ok(branches)
}

/// Branches and the mountpoint must be directories; branches become absolute, since the
/// daemon changes its directory to `/`.
fn validate_dirs(opts: &mut Options) -> Result<(), OptionsError> {
    let mut seen = Vec::new();
    for branch in &mut opts.branches {
        let shown = branch.path.display().to_string();
        let canonical = match std::fs::canonicalize(&branch.path) {
            Ok(p) if p.is_dir() => p,
            Ok(_) => {
                return Err(OptionsError::NotADirectory {
                    path: shown,
                    reason: "not a directory".into(),
                })
            }
            Err(e) => {
                return Err(OptionsError::NotADirectory {
                    path: shown,
                    reason: e.to_string(),
                })
            }
        };
        if seen.contains(&canonical) {
            return Err(OptionsError::DuplicateBranch(shown));
        }
        seen.push(canonical.clone());
        branch.path = canonical;
    }
    match std::fs::canonicalize(&opts.mountpoint) {
        Ok(m) if m.is_dir() => {
            opts.mountpoint = m;
            Ok(())
        }
        Ok(_) => Err(OptionsError::BadMountpoint {
            path: opts.mountpoint.display().to_string(),
            reason: "not a directory".into(),
        }),
        Err(e) => Err(OptionsError::BadMountpoint {
            path: opts.mountpoint.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, OptionsError> {
        Options::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn branches_modes_and_generic_options() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let m = tempfile::tempdir().unwrap();
        let br = format!(
            "br={}=rw:{}=ro+wh:{}",
            a.path().display(),
            b.path().display(),
            c.path().display()
        );
        let o = parse(&[
            "berth-aufs",
            m.path().to_str().unwrap(),
            "-o",
            &format!("{br},allow_other"),
            "-o",
            "dev,suid,nodev,default_permissions,weird",
        ])
        .unwrap();
        let modes: Vec<_> = o.branches.iter().map(|b| b.mode).collect();
        assert_eq!(modes, [BranchMode::Rw, BranchMode::RoWh, BranchMode::Ro]);
        assert!(o.nodev && !o.nosuid && !o.read_only && o.writable());
        assert_eq!(o.ignored, ["weird"]);
    }

    #[test]
    fn bad_branches_are_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (a, b) = (a.path().display(), b.path().display());
        let m = "/";
        assert_eq!(parse(&["s", m]), Err(OptionsError::NoBranches));
        assert!(matches!(
            parse(&["s", m, "-o", &format!("br={a}=ro:{b}=rw")]),
            Err(OptionsError::RwNotTop(_))
        ));
        assert!(matches!(
            parse(&["s", m, "-o", &format!("br={a}=rx")]),
            Err(OptionsError::BadPermission { .. })
        ));
        assert!(matches!(
            parse(&["s", m, "-o", &format!("br={a}::{b}")]),
            Err(OptionsError::EmptyBranch(_))
        ));
        assert!(matches!(
            parse(&["s", m, "-o", "br=/nonexistent/x=rw"]),
            Err(OptionsError::NotADirectory { .. })
        ));
        assert_eq!(parse(&["s"]), Err(OptionsError::Usage));
        let ro = parse(&["s", m, "-o", &format!("br={a}=rw,ro")]).unwrap();
        assert!(!ro.writable());
    }
}
