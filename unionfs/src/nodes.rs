//! The node table: merged paths (parent node + name), their cached layers, and the
//! (dev, ino) map that gives hard links one inode number.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Weak;

use fuser::{BackingId, INodeNo};

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

pub(crate) struct Node {
    /// Names as (parent node, name); the first is used to reach the backing files. Several
    /// only for hard links; empty once unlinked (the node lives on for open handles).
    pub(crate) names: Vec<(u64, OsString)>,
    pub(crate) is_dir: bool,
    /// Branches holding this entry, top first (see the module docs).
    pub(crate) layers: Vec<usize>,
    /// The passthrough backing file registered for this node and the branch it lives in:
    /// the kernel requires every open of one inode to share one backing file.
    pub(crate) backing: Option<Backing>,
    /// Copied up while the kernel still had it open on a lower backing file: its names now
    /// lead to a fresh node (see `UnionFs::retire`).
    pub(crate) retired: bool,
}

pub(crate) struct Backing {
    pub(crate) id: Weak<BackingId>,
    pub(crate) branch: usize,
    pub(crate) writable: bool,
}

/// Node ids double as `st_ino` (fuser sends `FileAttr::ino` as both).
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) nodes: HashMap<u64, Node>,
    pub(crate) children: HashMap<(u64, OsString), u64>,
    /// (dev, ino) of backing files -> node id (possibly reserved by readdir, no node yet).
    pub(crate) devino: HashMap<(u64, u64), u64>,
    pub(crate) next: u64,
}

impl Table {
    pub(crate) fn node(&self, id: u64) -> io::Result<&Node> {
        self.nodes.get(&id).ok_or_else(|| err(libc::ENOENT))
    }

    pub(crate) fn node_mut(&mut self, id: u64) -> io::Result<&mut Node> {
        self.nodes.get_mut(&id).ok_or_else(|| err(libc::ENOENT))
    }

    pub(crate) fn primary(&self, id: u64) -> io::Result<(u64, OsString)> {
        self.node(id)?
            .names
            .first()
            .cloned()
            .ok_or_else(|| err(libc::ENOENT))
    }

    /// The merged path of a node relative to the branch roots.
    pub(crate) fn rel_path(&self, mut id: u64) -> io::Result<PathBuf> {
        let mut parts = Vec::new();
        while id != INodeNo::ROOT.0 {
            let node = self.node(id)?;
            let (parent, name) = node.names.first().ok_or_else(|| err(libc::ENOENT))?;
            parts.push(name.as_os_str());
            id = *parent;
        }
        Ok(parts.iter().rev().collect())
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The id readdir reports for a backing (dev, ino): the node's, or one reserved for it.
    pub(crate) fn id_for(&mut self, dev: u64, ino: u64) -> u64 {
        if let Some(id) = self.devino.get(&(dev, ino)) {
            return *id;
        }
        let id = self.fresh_id();
        self.devino.insert((dev, ino), id);
        id
    }

    /// Registers `parent/name` resolved to `layers` (topmost instance `meta`); returns its id.
    pub(crate) fn insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        layers: Vec<usize>,
        meta: &Metadata,
    ) -> u64 {
        let key = (parent, name.to_os_string());
        if let Some(&id) = self.children.get(&key) {
            if let Some(node) = self.nodes.get_mut(&id) {
                node.layers = layers;
                return id;
            }
        }
        let devino = (meta.dev(), meta.ino());
        let mut id = match self.devino.get(&devino) {
            Some(&id) => id,
            None => self.fresh_id(),
        };
        match self.nodes.get_mut(&id) {
            None => {}
            // Another name of the same file in the same branch: a hard link.
            Some(node)
                if !node.is_dir
                    && !meta.is_dir()
                    && !node.retired
                    && !node.names.is_empty()
                    && node.layers.first() == layers.first() =>
            {
                node.names.push(key.clone());
                self.children.insert(key, id);
                return id;
            }
            // Unlinked, copied up (link broken) or a directory: a new inode for the kernel.
            Some(_) => id = self.fresh_id(),
        }
        self.devino.insert(devino, id);
        self.nodes.insert(
            id,
            Node {
                names: vec![key.clone()],
                is_dir: meta.is_dir(),
                layers,
                backing: None,
                retired: false,
            },
        );
        self.children.insert(key, id);
        id
    }

    /// Forgets the name `parent/name`; its node stays for open handles.
    pub(crate) fn detach(&mut self, parent: u64, name: &OsStr) {
        let key = (parent, name.to_os_string());
        if let Some(id) = self.children.remove(&key) {
            if let Some(node) = self.nodes.get_mut(&id) {
                node.names.retain(|n| *n != key);
            }
        }
    }
}
