//! The FUSE operations: each decodes its request, calls one `UnionFs` method and replies.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::info;

use super::*;

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Passthrough: the kernel does reads and writes on the backing file itself. Depth 2
        // lets branches live on overlayfs; nothing is meant to stack on top of this mount.
        let wanted = std::env::var_os("BERTH_AUFS_PASSTHROUGH").is_none_or(|v| v != "0");
        if wanted
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            abi = %config.kernel_abi(),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_impl(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_impl(ino.0, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.setattr_impl(ino.0, a, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let res = (|| {
            let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
            let (rel, layers, _) = self.info(ino.0)?;
            fs::read_link(self.path_in(layers[0], &rel))
        })();
        match res {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let perm = mode & !umask & 0o7777;
        let res = {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            self.create_entry(
                req,
                parent.0,
                name,
                Some(perm),
                |path| {
                    let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
                    nix::sys::stat::mknod(
                        path,
                        kind,
                        nix::sys::stat::Mode::from_bits_truncate(perm),
                        rdev.into(),
                    )?;
                    Ok(None)
                },
                None,
            )
        };
        match res {
            Ok((_, c)) => reply.entry(&TTL, &c.attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = mode & !umask & 0o7777;
        let res = {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            self.create_entry(
                req,
                parent.0,
                name,
                Some(perm),
                |path| {
                    fs::DirBuilder::new().mode(perm).create(path)?;
                    Ok(None)
                },
                None,
            )
        };
        match res {
            Ok((_, c)) => reply.entry(&TTL, &c.attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_impl(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_impl(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let res = {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            self.create_entry(
                req,
                parent.0,
                link_name,
                None,
                |path| {
                    std::os::unix::fs::symlink(target, path)?;
                    Ok(None)
                },
                None,
            )
        };
        match res {
            Ok((_, c)) => reply.entry(&TTL, &c.attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.rename_impl(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            self.check_writable()?;
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            let src = self.copy_up(ino.0)?;
            self.create_entry(
                req,
                newparent.0,
                newname,
                None,
                |path| {
                    fs::hard_link(&src, path)?;
                    Ok(None)
                },
                Some(ino.0),
            )
        })();
        match res {
            Ok((_, c)) => reply.entry(&TTL, &c.attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| {
            let (file, branch, writable) = self.open_backing_file(ino.0, flags)?;
            let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
            let retired = lock(&self.table)
                .nodes
                .get(&ino.0)
                .is_some_and(|n| n.retired);
            if write && retired && self.open_on_lower(ino.0) {
                // Open for reading on the lower file by the kernel's inode for this node; the
                // copy-up gave the name a new node, but this open is bound to the old one.
                return Err(err(libc::ETXTBSY));
            }
            let backing =
                self.backing_for(ino.0, branch, writable, &file, |f| reply.open_backing(f));
            let fh = self.new_fh();
            let read_only = branch != RW || flags.acc_mode() == OpenAccMode::O_RDONLY;
            lock(&self.handles).insert(
                fh,
                Handle {
                    file: Arc::new(file),
                    _backing: backing.clone(),
                },
            );
            Ok::<_, io::Error>((fh, backing, read_only))
        })();
        match res {
            Ok((fh, Some(backing), _)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            // Lower files never change under us: keep their pages cached across opens.
            Ok((fh, None, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Ok((fh, None, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = lock(&self.handles).get(&fh.0).map(|h| h.file.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(file) = lock(&self.handles).get(&fh.0).map(|h| h.file.clone()) else {
            return reply.error(Errno::EBADF);
        };
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(file) = lock(&self.handles).get(&fh.0).map(|h| h.file.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let res = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| {
            let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
            let (rel, layers, is_dir) = self.info(ino.0)?;
            if !is_dir {
                return Err(err(libc::ENOTDIR));
            }
            let raw = self.list(&layers, &rel)?;
            let mut t = lock(&self.table);
            let parent = if ino == INodeNo::ROOT {
                ino.0
            } else {
                t.primary(ino.0)?.0
            };
            let mut entries = vec![
                DirEntry {
                    name: ".".into(),
                    ino: ino.0,
                    kind: FileType::Directory,
                },
                DirEntry {
                    name: "..".into(),
                    ino: parent,
                    kind: FileType::Directory,
                },
            ];
            for (name, kind, dev, backing_ino) in raw {
                let id = match t.children.get(&(ino.0, name.clone())) {
                    Some(id) => *id,
                    None => t.id_for(dev, backing_ino),
                };
                entries.push(DirEntry {
                    name,
                    ino: id,
                    kind,
                });
            }
            Ok(entries)
        })();
        match res {
            Ok(entries) => {
                let fh = self.new_fh();
                lock(&self.dirs).insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.branches[0].path) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let res = (|| {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            let path = self.copy_up(ino.0)?;
            sys::lsetxattr(&path, name, value, flags)
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let res = (|| {
            let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
            let (rel, layers, _) = self.info(ino.0)?;
            sys::lgetxattr(&self.path_in(layers[0], &rel), name)
        })();
        reply_xattr(res, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let res = (|| {
            let _g = self.ns.read().unwrap_or_else(|p| p.into_inner());
            let (rel, layers, _) = self.info(ino.0)?;
            sys::llistxattr(&self.path_in(layers[0], &rel))
        })();
        reply_xattr(res, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = (|| {
            let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
            let path = self.copy_up(ino.0)?;
            sys::lremovexattr(&path, name)
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = mode & !umask & 0o7777;
        let res = (|| {
            let (id, created) = {
                let _g = self.ns.write().unwrap_or_else(|p| p.into_inner());
                self.create_entry(
                    req,
                    parent.0,
                    name,
                    Some(perm),
                    |path| {
                        // Read-write whatever the caller asked: it becomes the inode's shared
                        // passthrough backing file (see `open_backing_file`).
                        let opts = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .mode(perm)
                            .clone();
                        Ok(Some(opts.open(path)?))
                    },
                    None,
                )?
            };
            let file = created.file.ok_or_else(|| err(libc::EIO))?;
            let backing = self.backing_for(id, RW, true, &file, |f| reply.open_backing(f));
            let fh = self.new_fh();
            lock(&self.handles).insert(
                fh,
                Handle {
                    file: Arc::new(file),
                    _backing: backing.clone(),
                },
            );
            Ok::<_, io::Error>((created.attr, fh, backing))
        })();
        match res {
            Ok((attr, fh, Some(backing))) => reply.created_passthrough(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &backing,
            ),
            Ok((attr, fh, None)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(file) = lock(&self.handles).get(&fh.0).map(|h| h.file.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let res = nix::fcntl::fallocate(
            &*file,
            nix::fcntl::FallocateFlags::from_bits_truncate(mode),
            offset as i64,
            length as i64,
        );
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}

fn reply_xattr(res: io::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match res {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(&e)),
    }
}
