//! `berth-aufs`: an AUFS-semantics union filesystem in userspace, for the `aufs` snapshotter.
//!
//! The kernel here has no aufs, so the snapshotter hands out `fuse3.berth-aufs` mounts with
//! AUFS's own option syntax (`br=<dir>=rw:<dir>=ro+wh:...`, top first) and the stock FUSE mount
//! helper starts this binary, which mounts `/dev/fuse` itself and serves the union.
//!
//! Semantics are AUFS's: lookups go top-down; `.wh.<name>` in a branch hides `<name>` in the
//! branches below; a directory holding `.wh..wh..opq` hides everything below it; `.wh.*` names
//! never show. Writes go to the single top `rw` branch: copy-up (data, owner, mode, xattrs,
//! times) on first write or metadata change, whiteouts on deletion of lower entries, opaque
//! markers on directories created over deleted ones. Renaming a directory that exists in a
//! lower branch copies its merged tree up first (the moved copy is opaque), as fuse-overlayfs
//! does, rather than returning EXDEV as aufs without `dirren` would.
//!
//! Reads must stay close to kernel overlayfs, so regular files are opened with FUSE passthrough
//! (kernel ≥ 6.9): the kernel reads and writes the backing file directly and this process only
//! sees open and close. Without passthrough, I/O is served here in requests of up to 1 MiB.
//!
//! Limits: the kernel binds one passthrough file to an open inode, so a write-open of a file
//! that another process holds open on its lower copy is refused once with ETXTBSY (the name
//! then gets a fresh inode; the reader keeps the old data, as with overlayfs). Hard links are
//! copied up together for the names already looked up. `RENAME_EXCHANGE` and
//! `RENAME_WHITEOUT` are not supported (EINVAL).

pub mod copyup;
pub mod fs;
pub mod mount;
mod nodes;
pub mod options;
mod sys;

pub use fs::UnionFs;
pub use options::{Branch, BranchMode, Options, OptionsError};
