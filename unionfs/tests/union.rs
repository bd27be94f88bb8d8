//! berth-aufs through real mounts (run as root): via the stock `mount.fuse3` helper exactly as
//! containerd runs it, and via the binary directly.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_berth-aufs");

/// A temp dir with branches `rw`, `l1`, `l2` (top to bottom) and a mountpoint `mnt`.
struct Union {
    dir: tempfile::TempDir,
}

impl Union {
    fn new() -> Union {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["rw", "l1", "l2", "mnt"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        Union { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mnt(&self, rel: &str) -> PathBuf {
        self.p("mnt").join(rel)
    }

    fn br(&self) -> String {
        format!(
            "br={}=rw:{}=ro+wh:{}=ro+wh",
            self.p("rw").display(),
            self.p("l1").display(),
            self.p("l2").display()
        )
    }

    /// Mounts through `mount.fuse3 SRC TARGET -o ... -t berth-aufs`, the binary found on PATH.
    fn mount_helper(&self, opts: &[&str]) -> Output {
        let bin_dir = Path::new(BIN).parent().expect("bin dir");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("mount.fuse3");
        cmd.env("PATH", path).arg("berth-aufs").arg(self.p("mnt"));
        for o in opts {
            cmd.arg("-o").arg(o);
        }
        cmd.arg("-t").arg("berth-aufs");
        cmd.output().expect("run mount.fuse3")
    }

    fn mount_direct(&self, opts: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("berth-aufs").arg(self.p("mnt"));
        for o in opts {
            cmd.arg("-o").arg(o);
        }
        cmd.output().expect("run berth-aufs")
    }

    fn mount_ok(&self, out: Output) {
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(self.is_mounted(), "not in /proc/mounts after success");
    }

    fn is_mounted(&self) -> bool {
        let target = self.p("mnt").canonicalize().expect("canonical mnt");
        fs::read_to_string("/proc/self/mounts")
            .expect("mounts")
            .lines()
            .any(|l| {
                let mut f = l.split(' ');
                f.next();
                f.next() == Some(target.to_str().expect("utf8"))
                    && f.next() == Some("fuse.berth-aufs")
            })
    }

    /// Pid of the serving process (found by its mountpoint argument).
    fn server_pid(&self) -> Option<u32> {
        let target = self.p("mnt").canonicalize().ok()?;
        for e in fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"berth-aufs"))
                && args
                    .iter()
                    .any(|a| *a == target.as_os_str().as_encoded_bytes())
                && !is_zombie(pid)
            {
                return Some(pid);
            }
        }
        None
    }

    fn umount(&self) {
        let st = Command::new("umount")
            .arg(self.p("mnt"))
            .status()
            .expect("umount");
        assert!(st.success(), "umount failed");
    }
}

impl Drop for Union {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = nix::mount::umount2(&self.p("mnt"), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        Err(_) => true,
    }
}

fn write(path: PathBuf, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir -p");
    }
    fs::write(path, content).expect("write");
}

fn names(dir: PathBuf) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The layered fixture used by most tests.
fn layered() -> Union {
    let u = Union::new();
    write(u.p("l2/a"), "l2");
    write(u.p("l2/only2"), "only2");
    write(u.p("l2/gone"), "gone");
    write(u.p("l2/d/x"), "x");
    write(u.p("l2/dir/keep"), "keep");
    write(u.p("l1/a"), "l1");
    write(u.p("l1/.wh.gone"), "");
    write(u.p("l1/d/.wh..wh..opq"), "");
    write(u.p("l1/d/y"), "y");
    write(u.p("l1/.wh..wh.plnk/junk"), "");
    u
}

#[test]
fn helper_mount_merges_branches_and_hides_whiteouts() {
    let u = layered();
    u.mount_ok(u.mount_helper(&[&u.br(), "allow_other"]));
    // The upper branch wins.
    assert_eq!(fs::read_to_string(u.mnt("a")).expect("read a"), "l1");
    assert_eq!(fs::read_to_string(u.mnt("only2")).expect("only2"), "only2");
    // Whiteout and opaque directory hide lower entries; aufs names never show.
    assert_eq!(names(u.mnt("")), ["a", "d", "dir", "only2"]);
    assert_eq!(errno_of(fs::metadata(u.mnt("gone"))), Some(libc::ENOENT));
    assert_eq!(names(u.mnt("d")), ["y"]);
    assert_eq!(errno_of(fs::metadata(u.mnt("d/x"))), Some(libc::ENOENT));
    for hidden in [".wh.gone", ".wh..wh.plnk", "d/.wh..wh..opq"] {
        assert_eq!(
            errno_of(fs::symlink_metadata(u.mnt(hidden))),
            Some(libc::ENOENT),
            "{hidden} visible"
        );
    }
    // Inode numbers are stable per path.
    let ino = fs::metadata(u.mnt("only2")).expect("stat").ino();
    fs::read_dir(u.mnt("")).expect("readdir").for_each(drop);
    assert_eq!(fs::metadata(u.mnt("only2")).expect("stat").ino(), ino);

    let pid = u.server_pid().expect("server process running");
    u.umount();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "berth-aufs {pid} still alive after umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn copy_up_preserves_metadata_and_leaves_lower_alone() {
    let u = layered();
    let lower = u.p("l2/dir/keep");
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::chown(&lower, Some(1234), Some(5678)).expect("chown");
    xattr_set(&lower, "user.berth", b"v1");
    let mtime = filetime(&lower, 1_000_000_000);
    u.mount_ok(u.mount_direct(&[&u.br()]));

    let ino = fs::metadata(u.mnt("dir/keep")).expect("stat").ino();
    // Opening for write copies up, even without writing.
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(u.mnt("dir/keep"))
            .expect("open for write"),
    );
    let up = fs::metadata(u.p("rw/dir/keep")).expect("copied up");
    assert_eq!(up.mode() & 0o7777, 0o640);
    assert_eq!((up.uid(), up.gid()), (1234, 5678));
    assert_eq!(up.mtime(), mtime);
    assert_eq!(xattr_get(&u.p("rw/dir/keep"), "user.berth"), b"v1");
    assert_eq!(
        fs::read_to_string(u.p("rw/dir/keep")).expect("read"),
        "keep"
    );
    // The parent directory was created with its lower attributes.
    assert!(fs::metadata(u.p("rw/dir")).expect("rw dir").is_dir());
    // Same inode number after copy-up.
    assert_eq!(fs::metadata(u.mnt("dir/keep")).expect("stat").ino(), ino);

    // Writes land in the rw branch only.
    fs::write(u.mnt("dir/keep"), "new").expect("write");
    assert_eq!(fs::read_to_string(u.mnt("dir/keep")).expect("read"), "new");
    assert_eq!(fs::read_to_string(u.p("rw/dir/keep")).expect("read"), "new");
    assert_eq!(fs::read_to_string(&lower).expect("lower"), "keep");

    // chmod/chown/xattr on another lower file copy it up too.
    let f = u.mnt("only2");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&f, Some(42), Some(43)).expect("chown");
    xattr_set(&f, "user.x", b"y");
    let up = fs::metadata(u.p("rw/only2")).expect("copied up");
    assert_eq!((up.mode() & 0o7777, up.uid(), up.gid()), (0o600, 42, 43));
    assert_eq!(xattr_get(&f, "user.x"), b"y");
    assert_eq!(
        fs::metadata(u.p("l2/only2")).expect("lower").mode() & 0o777,
        0o644
    );
    assert!(
        fs::metadata(u.p("l2/only2")).expect("lower").uid() != 42,
        "lower file changed"
    );
}

#[test]
fn unlink_rmdir_and_mkdir_over_deleted_dir() {
    let u = layered();
    u.mount_ok(u.mount_direct(&[&u.br()]));

    fs::remove_file(u.mnt("a")).expect("unlink a");
    assert!(u.p("rw/.wh.a").exists(), "no whiteout for a lower file");
    assert_eq!(fs::read_to_string(u.p("l1/a")).expect("lower"), "l1");
    assert_eq!(errno_of(fs::metadata(u.mnt("a"))), Some(libc::ENOENT));

    // A file created only in rw needs no whiteout when removed.
    fs::write(u.mnt("fresh"), "f").expect("create");
    assert_eq!(fs::read_to_string(u.p("rw/fresh")).expect("rw"), "f");
    fs::remove_file(u.mnt("fresh")).expect("unlink fresh");
    assert!(!u.p("rw/.wh.fresh").exists() && !u.p("rw/fresh").exists());

    // rmdir of a merged non-empty directory fails; emptied, it works and leaves a whiteout.
    assert_eq!(
        errno_of(fs::remove_dir(u.mnt("dir"))),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(u.mnt("dir/keep")).expect("unlink keep");
    assert_eq!(names(u.mnt("dir")), Vec::<String>::new());
    fs::remove_dir(u.mnt("dir")).expect("rmdir");
    assert!(u.p("rw/.wh.dir").exists());
    assert!(u.p("l2/dir/keep").exists(), "lower touched");

    // A directory re-created over the deleted one is opaque: the lower entries stay hidden.
    fs::create_dir(u.mnt("dir")).expect("mkdir");
    assert!(u.p("rw/dir/.wh..wh..opq").exists(), "no opaque marker");
    assert!(!u.p("rw/.wh.dir").exists(), "whiteout left behind");
    assert_eq!(names(u.mnt("dir")), Vec::<String>::new());

    // Whiteout names cannot be created through the union.
    assert_eq!(errno_of(fs::write(u.mnt(".wh.x"), "")), Some(libc::EPERM));

    // Re-creating a deleted file removes its whiteout.
    fs::write(u.mnt("a"), "again").expect("recreate");
    assert!(!u.p("rw/.wh.a").exists());
    assert_eq!(fs::read_to_string(u.mnt("a")).expect("read"), "again");

    // rm -r of a lower tree with busybox-like recursion.
    fs::remove_dir_all(u.mnt("d")).expect("rm -r d");
    assert_eq!(names(u.mnt("")), ["a", "dir", "only2"]);
}

#[test]
fn rename_link_symlink_and_ownership() {
    let u = layered();
    u.mount_ok(u.mount_direct(&[&u.br()]));

    // Rename of a lower file: copied up, old name whited out.
    fs::rename(u.mnt("only2"), u.mnt("moved")).expect("rename file");
    assert_eq!(fs::read_to_string(u.mnt("moved")).expect("read"), "only2");
    assert_eq!(errno_of(fs::metadata(u.mnt("only2"))), Some(libc::ENOENT));
    assert!(u.p("rw/.wh.only2").exists());
    // Rename over an existing lower file replaces it.
    fs::rename(u.mnt("moved"), u.mnt("a")).expect("rename over");
    assert_eq!(fs::read_to_string(u.mnt("a")).expect("read"), "only2");

    // Directories living in lower branches move whole (their tree is copied up, the old
    // name whited out, the moved copy opaque); rw-only ones just move.
    let before = names(u.mnt("dir"));
    fs::rename(u.mnt("dir"), u.mnt("dir2")).expect("rename lower dir");
    assert_eq!(names(u.mnt("dir2")), before);
    assert!(!u.mnt("dir").exists());
    assert!(u.p("rw/.wh.dir").exists());
    assert!(u.p("rw/dir2/.wh..wh..opq").exists());
    fs::rename(u.mnt("dir2"), u.mnt("dir")).expect("rename back");
    assert_eq!(names(u.mnt("dir")), before);
    fs::create_dir(u.mnt("new")).expect("mkdir");
    fs::write(u.mnt("new/f"), "nf").expect("write");
    fs::rename(u.mnt("new"), u.mnt("new2")).expect("rename dir");
    assert_eq!(fs::read_to_string(u.mnt("new2/f")).expect("read"), "nf");
    assert!(!u.mnt("new").exists());
    let st = Command::new("mv")
        .arg(u.mnt("dir"))
        .arg(u.mnt("dir3"))
        .status()
        .expect("mv");
    assert!(st.success());
    assert_eq!(
        fs::read_to_string(u.mnt("dir3/keep")).expect("read"),
        "keep"
    );
    assert!(!u.mnt("dir").exists());

    // Hard link of a lower file: copy-up, then the link in rw; both names share st_ino.
    fs::hard_link(u.mnt("d/y"), u.mnt("d/y2")).expect("link");
    let (a, b) = (
        fs::metadata(u.mnt("d/y")).expect("y"),
        fs::metadata(u.mnt("d/y2")).expect("y2"),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    assert_eq!(
        fs::metadata(u.p("rw/d/y")).expect("rw y").ino(),
        fs::metadata(u.p("rw/d/y2")).expect("rw y2").ino()
    );

    // Symlinks.
    std::os::unix::fs::symlink("d/y", u.mnt("sl")).expect("symlink");
    assert_eq!(
        fs::read_link(u.mnt("sl")).expect("readlink"),
        PathBuf::from("d/y")
    );
    assert_eq!(fs::read_to_string(u.mnt("sl")).expect("follow"), "y");

    // New files belong to the caller's uid/gid (root here) and honour the mode.
    fs::create_dir(u.mnt("perm")).expect("mkdir");
    fs::set_permissions(u.mnt("perm"), fs::Permissions::from_mode(0o2775)).expect("chmod");
    std::os::unix::fs::chown(u.mnt("perm"), Some(7), Some(8)).expect("chown");
    fs::write(u.mnt("perm/f"), "").expect("create");
    let m = fs::metadata(u.mnt("perm/f")).expect("stat");
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 8),
        "set-gid directory group not inherited"
    );
    let m = fs::metadata(u.p("rw/perm")).expect("rw perm");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2775, 7, 8));
}

#[test]
fn hardlinks_in_a_lower_branch_share_an_inode_number() {
    let u = layered();
    fs::hard_link(u.p("l2/only2"), u.p("l2/only2-link")).expect("link");
    u.mount_ok(u.mount_direct(&[&u.br()]));
    let a = fs::metadata(u.mnt("only2")).expect("a");
    let b = fs::metadata(u.mnt("only2-link")).expect("b");
    assert_eq!(a.ino(), b.ino());
    assert_ne!(a.ino(), fs::metadata(u.mnt("a")).expect("other").ino());
    // Writing through one name copies the link up as a link.
    fs::write(u.mnt("only2"), "changed").expect("write");
    assert_eq!(
        fs::read_to_string(u.mnt("only2-link")).expect("read"),
        "changed"
    );
    assert_eq!(fs::read_to_string(u.p("l2/only2")).expect("lower"), "only2");
}

#[test]
fn read_only_mounts_reject_writes() {
    let u = layered();
    // A view: no rw branch.
    let view = format!(
        "br={}=ro+wh:{}=ro+wh",
        u.p("l1").display(),
        u.p("l2").display()
    );
    u.mount_ok(u.mount_helper(&[&view, "ro"]));
    assert_eq!(fs::read_to_string(u.mnt("a")).expect("read"), "l1");
    assert_eq!(errno_of(fs::write(u.mnt("new"), "x")), Some(libc::EROFS));
    assert_eq!(errno_of(fs::remove_file(u.mnt("a"))), Some(libc::EROFS));
    assert_eq!(errno_of(fs::create_dir(u.mnt("nd"))), Some(libc::EROFS));
    u.umount();

    // `ro` over a rw branch, and no `ro` but no rw branch either.
    u.mount_ok(u.mount_direct(&[&u.br(), "ro"]));
    assert_eq!(
        errno_of(fs::OpenOptions::new().append(true).open(u.mnt("a"))),
        Some(libc::EROFS)
    );
    u.umount();
    u.mount_ok(u.mount_direct(&[&view]));
    assert_eq!(errno_of(fs::write(u.mnt("a"), "x")), Some(libc::EROFS));
    assert_eq!(
        errno_of(fs::set_permissions(
            u.mnt("a"),
            fs::Permissions::from_mode(0o600)
        )),
        Some(libc::EROFS)
    );
    assert_eq!(names(u.p("rw")), Vec::<String>::new());
}

#[test]
fn bad_options_fail_with_a_clear_message() {
    let u = Union::new();
    let cases: [(&str, &str); 4] = [
        ("br=/nonexistent/berth=rw", "is not a directory"),
        (
            &format!("br={}=ro:{}=rw", u.p("l1").display(), u.p("rw").display()),
            "only the top (first) branch may be rw",
        ),
        (
            &format!("br={}=rx", u.p("l1").display()),
            "unknown permission \"rx\"",
        ),
        ("allow_other", "no branches"),
    ];
    for (opt, expect) in cases {
        for out in [u.mount_direct(&[opt]), u.mount_helper(&[opt])] {
            assert!(!out.status.success(), "{opt} accepted");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(expect), "{opt}: stderr {err:?}");
        }
        assert!(!u.is_mounted());
    }
    let out = Command::new(BIN).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn busybox_shell_runs_in_a_chroot() {
    let u = Union::new();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox installed");
    fs::create_dir_all(u.p("l2/bin")).expect("mkdir");
    fs::copy(busybox, u.p("l2/bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat", "ls", "wc", "rm"] {
        std::os::unix::fs::symlink("busybox", u.p("l2/bin").join(applet)).expect("symlink");
    }
    fs::create_dir_all(u.p("l1/tmp")).expect("mkdir");
    write(u.p("l1/etc/motd"), "hello from l1\n");
    u.mount_ok(u.mount_helper(&[&u.br(), "allow_other", "default_permissions"]));
    let out = Command::new("chroot")
        .arg(u.p("mnt"))
        .args([
            "/bin/sh",
            "-c",
            "cat /etc/motd && echo written > /tmp/out && cat /tmp/out && \
             ls /bin | wc -l && rm /etc/motd && \
             test ! -e /etc/motd && echo ok",
        ])
        .output()
        .expect("chroot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shell failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello from l1\nwritten\n6\nok\n");
    assert_eq!(
        fs::read_to_string(u.p("rw/tmp/out")).expect("rw"),
        "written\n"
    );
    assert!(u.p("rw/etc/.wh.motd").exists());
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C strings and a slice with its length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn xattr_get(path: &Path, name: &str) -> Vec<u8> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        rc >= 0,
        "getxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(rc as usize);
    buf
}

/// Sets atime and mtime to `secs` and returns it.
fn filetime(path: &Path, secs: i64) -> i64 {
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
    secs
}

#[test]
fn copy_up_while_a_reader_holds_the_lower_file() {
    let u = layered();
    u.mount_ok(u.mount_direct(&[&u.br()]));
    let mut reader = fs::File::open(u.mnt("only2")).expect("open reader");
    // The kernel binds an open inode to one passthrough file: a writer that arrives while
    // the lower file is open may be refused once (ETXTBSY), never with a stuck inode.
    match fs::OpenOptions::new().append(true).open(u.mnt("only2")) {
        Ok(mut w) => std::io::Write::write_all(&mut w, b"+w1").expect("write"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}"),
    }
    let mut old = String::new();
    std::io::Read::read_to_string(&mut reader, &mut old).expect("read");
    assert_eq!(old, "only2", "the open reader keeps the file as it was");
    drop(reader);
    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(u.mnt("only2"))
        .expect("open for append after the reader closed");
    std::io::Write::write_all(&mut w, b"+w2").expect("write");
    drop(w);
    let now = fs::read_to_string(u.mnt("only2")).expect("read");
    assert!(now.starts_with("only2") && now.ends_with("+w2"), "{now:?}");
    assert_eq!(fs::read_to_string(u.p("rw/only2")).expect("rw"), now);
    assert_eq!(fs::read_to_string(u.p("l2/only2")).expect("lower"), "only2");
}

#[test]
fn plain_ro_branches_ignore_whiteouts_and_mount_flags_apply() {
    let u = layered();
    // `ro` (without +wh): AUFS does not look for whiteouts there, but still hides the names.
    let br = format!(
        "br={}=rw:{}=ro:{}",
        u.p("rw").display(),
        u.p("l1").display(),
        u.p("l2").display()
    );
    u.mount_ok(u.mount_direct(&[&br, "nosuid,nodev", "noexec"]));
    assert_eq!(names(u.mnt("")), ["a", "d", "dir", "gone", "only2"]);
    assert_eq!(names(u.mnt("d")), ["x", "y"]);
    let target = u.p("mnt").canonicalize().expect("canonical");
    let line = fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .find(|l| l.split(' ').nth(1) == target.to_str())
        .map(str::to_owned)
        .expect("mount line");
    let opts = line.split(' ').nth(3).expect("options");
    for flag in [
        "nosuid",
        "nodev",
        "noexec",
        "allow_other",
        "default_permissions",
    ] {
        assert!(
            opts.split(',').any(|o| o == flag),
            "{flag} missing in {opts}"
        );
    }
}

#[test]
fn foreground_mode_serves_until_unmounted() {
    let u = layered();
    let mut child = Command::new(BIN)
        .arg("berth-aufs")
        .arg(u.p("mnt"))
        .arg("-o")
        .arg(u.br())
        .arg("--foreground")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !u.is_mounted() {
        assert!(Instant::now() < deadline, "never mounted");
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fs::read_to_string(u.mnt("a")).expect("read"), "l1");
    u.umount();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running after umount");
        std::thread::sleep(Duration::from_millis(10));
    }
}
