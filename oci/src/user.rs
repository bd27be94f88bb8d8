//! The user a container runs as, resolved like containerd's `WithUser` + `WithAdditionalGIDs`
//! against the rootfs's `/etc/passwd` and `/etc/group` (paths resolved inside the rootfs, so a
//! symlink cannot point outside it).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// A resolved user: ids and supplementary groups (the primary gid first, as containerd puts it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return None;
    }
    Some(line.split(':').collect())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `path` (absolute, inside the container) resolved within `root`: `..` stops at the root and
/// symlinks are followed relative to it (containerd's `fs.RootPath`).
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    const MAX_LINKS: usize = 255;
    let mut pending: Vec<PathBuf> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::io(
                        "resolve",
                        candidate,
                        io::Error::from_raw_os_error(40), // ELOOP
                    ));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| Error::io("read link", &candidate, e))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(PathBuf::from(n)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// A file of the rootfs; `None` if it does not exist.
fn read_rootfs_file(root: &Path, path: &str) -> Result<Option<String>> {
    let p = resolve_in_root(root, path)?;
    match std::fs::read(&p) {
        Ok(data) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", p, e)),
    }
}

struct Files<'a> {
    root: Option<&'a Path>,
    user: &'a str,
}

impl Files<'_> {
    fn root(&self) -> Result<&Path> {
        self.root.ok_or_else(|| Error::RootfsRequired {
            user: self.user.to_string(),
        })
    }

    fn passwd(&self) -> Result<Option<Vec<PasswdEntry>>> {
        Ok(read_rootfs_file(self.root()?, PASSWD)?.map(|t| parse_passwd(&t)))
    }

    fn group(&self) -> Result<Option<Vec<GroupEntry>>> {
        Ok(read_rootfs_file(self.root()?, GROUP)?.map(|t| parse_group(&t)))
    }

    fn user_by_name(&self, name: &str) -> Result<PasswdEntry> {
        self.passwd()?
            .unwrap_or_default()
            .into_iter()
            .find(|u| u.name == name)
            .ok_or_else(|| Error::NotFound {
                what: "user",
                name: name.to_string(),
                file: PASSWD,
            })
    }

    fn gid_by_name(&self, name: &str) -> Result<u32> {
        self.group()?
            .unwrap_or_default()
            .into_iter()
            .find(|g| g.name == name)
            .map(|g| g.gid)
            .ok_or_else(|| Error::NotFound {
                what: "group",
                name: name.to_string(),
                file: GROUP,
            })
    }
}

/// Resolves an image-spec `User` string (`user`, `uid`, `user:group`, `uid:gid`, `uid:group`,
/// `user:gid`; empty is root) as containerd does:
/// - `uid` alone takes the gid of the passwd entry with that uid, or 0 if there is none;
/// - names must be listed in `/etc/passwd` / `/etc/group`;
/// - supplementary groups are the `/etc/group` entries that list the user's name (other than
///   its own group), with the primary gid first.
///
/// Numeric `uid:gid` needs no rootfs; everything else reads it (a missing `rootfs` is then an
/// error, except for the supplementary groups of a numeric or empty user, which are skipped).
pub fn resolve(user: &str, rootfs: Option<&Path>) -> Result<User> {
    let files = Files { root: rootfs, user };
    let bad = || Error::InvalidArgument(format!("invalid user {user:?}"));
    let (uid, gid, name) = match user.split(':').collect::<Vec<_>>().as_slice() {
        [""] => (0, 0, Some("root".to_string())),
        [one] => match one.parse::<u32>() {
            Ok(uid) => match rootfs {
                None => (uid, 0, None),
                Some(_) => match files.passwd()? {
                    Some(users) => match users.into_iter().find(|u| u.uid == uid) {
                        Some(u) => (u.uid, u.gid, Some(u.name)),
                        None => (uid, 0, None),
                    },
                    None => (uid, 0, None),
                },
            },
            Err(_) => {
                let u = files.user_by_name(one)?;
                (u.uid, u.gid, Some(u.name))
            }
        },
        [u, g] if !u.is_empty() && !g.is_empty() => {
            let (uid, name) = match u.parse::<u32>() {
                Ok(uid) => (uid, None),
                Err(_) => {
                    let e = files.user_by_name(u)?;
                    (e.uid, Some(e.name))
                }
            };
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => files.gid_by_name(g)?,
            };
            // Supplementary groups are looked up by the uid's name, as containerd does.
            let name = match (name, rootfs) {
                (Some(n), _) => Some(n),
                (None, Some(_)) => files
                    .passwd()?
                    .and_then(|us| us.into_iter().find(|e| e.uid == uid))
                    .map(|e| e.name),
                (None, None) => None,
            };
            (uid, gid, name)
        }
        _ => return Err(bad()),
    };
    let mut additional = Vec::new();
    if let (Some(name), Some(_)) = (name, rootfs) {
        if let Some(groups) = files.group()? {
            additional = groups
                .into_iter()
                .filter(|g| g.name != name && g.members.contains(&name))
                .map(|g| g.gid)
                .collect();
        }
    }
    if !additional.contains(&gid) {
        additional.insert(0, gid);
    }
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             # a comment\n\
             \n\
             daemon:x:1:1::/:/bin/false\n\
             web:x:1000:1001:Web:/home/web:/bin/sh\n\
             broken:x:notanumber:1::/:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\n\
             wheel:x:10:root,web\n\
             web:x:1001:web\n\
             audio:x:29:web\n\
             staff:x:50:\n",
        )
        .unwrap();
        dir
    }

    fn r(user: &str, root: Option<&Path>) -> (u32, u32, Vec<u32>) {
        let u = resolve(user, root).unwrap();
        (u.uid, u.gid, u.additional_gids)
    }

    #[test]
    fn names_and_ids_from_the_rootfs() {
        let dir = rootfs();
        let root = Some(dir.path());
        assert_eq!(r("", root), (0, 0, vec![0, 10]));
        assert_eq!(r("root", root), (0, 0, vec![0, 10]));
        assert_eq!(r("web", root), (1000, 1001, vec![1001, 10, 29]));
        assert_eq!(r("1000", root), (1000, 1001, vec![1001, 10, 29]));
        assert_eq!(r("web:staff", root), (1000, 50, vec![50, 10, 29]));
        assert_eq!(r("1000:50", root), (1000, 50, vec![50, 10, 29]));
        assert_eq!(r("web:7", root), (1000, 7, vec![7, 10, 29]));
        // A uid without an entry gets gid 0.
        assert_eq!(r("4242", root), (4242, 0, vec![0]));
    }

    #[test]
    fn unknown_names_are_not_found() {
        let dir = rootfs();
        let e = resolve("nobody", Some(dir.path())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "user \"nobody\" not found in the rootfs's /etc/passwd"
        );
        let e = resolve("web:nogroup", Some(dir.path())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn numeric_users_need_no_rootfs() {
        assert_eq!(r("", None), (0, 0, vec![0]));
        assert_eq!(r("1000", None), (1000, 0, vec![0]));
        assert_eq!(r("1000:1000", None), (1000, 1000, vec![1000]));
        let e = resolve("web", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(matches!(e, Error::RootfsRequired { .. }));
    }

    #[test]
    fn malformed_users_are_invalid() {
        for bad in ["a:b:c", ":1", "1:", ":"] {
            let e = resolve(bad, None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn missing_files_mean_no_users() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(r("1000", Some(dir.path())), (1000, 0, vec![0]));
        assert_eq!(r("", Some(dir.path())), (0, 0, vec![0]));
        let e = resolve("web", Some(dir.path())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), "inside:x:7:8::/:\n").unwrap();
        std::fs::write(dir.path().join("passwd"), "outside:x:9:9::/:\n").unwrap();
        // An absolute link resolves against the rootfs, `..` stops at its top.
        std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(r("inside", Some(&root)), (7, 8, vec![8]));
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../passwd", root.join("etc/passwd")).unwrap();
        assert!(resolve("outside", Some(&root)).is_err());
        assert_eq!(
            resolve_in_root(&root, "/etc/passwd").unwrap(),
            root.join("passwd")
        );
        // Loops end.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/passwd")).unwrap();
        assert!(resolve("x", Some(&root)).is_err());
    }
}
