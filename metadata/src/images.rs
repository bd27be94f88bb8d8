//! Images: named references to a target descriptor (containerd's
//! `metadata/images.go`).
//!
//! An image record is `v1/<ns>/images/<name>` (see [`crate::schema`]). Images
//! are GC roots: the target content and whatever the image's own
//! `containerd.io/gc.ref.*` labels name stay alive while the image exists
//! (unless the image carries a `containerd.io/gc.expire` time that has
//! passed, in which case GC removes the image itself unless a lease holds
//! it). From the target, the content labels (`containerd.io/gc.ref.content.*`
//! on indexes and manifests, `containerd.io/gc.ref.snapshot.*` on configs)
//! carry the marking to the rest of the image.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::gc::LABEL_GC_EXPIRE;
use crate::kv::{ReadTxn, WriteTxn};
use crate::leases::{add_lease_resource, remove_lease_resource};
use crate::schema::{self, IMAGES, V1};
use crate::time::{nanos, parse_rfc3339};
use crate::validate::{normalize_labels, validate_identifier, validate_label, validate_labels};
use crate::Labels;
use berth_filters::{self as filters, check_map, Adaptor};

/// An OCI content descriptor as images store it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    /// `<algorithm>:<hex>`.
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

/// An image: a name for a target descriptor, with labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Image {
    /// A new image value (timestamps are set by create/update).
    pub fn new(name: impl Into<String>, target: Descriptor) -> Image {
        Image {
            name: name.into(),
            labels: Labels::new(),
            target,
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }
}

/// `v1/<ns>/images/<name>`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: Labels,
    pub(crate) target: Descriptor,
    #[serde(with = "nanos")]
    pub(crate) created_at: SystemTime,
    #[serde(with = "nanos")]
    pub(crate) updated_at: SystemTime,
}

pub(crate) fn images_prefix(ns: &str) -> Vec<u8> {
    schema::encode(&[V1, ns, IMAGES])
}

pub(crate) fn image_key(ns: &str, name: &str) -> Vec<u8> {
    schema::encode(&[V1, ns, IMAGES, name])
}

fn image_of(name: &str, r: ImageRecord) -> Image {
    Image {
        name: name.to_string(),
        labels: r.labels,
        target: r.target,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("image {name:?}"))
}

/// Checks a digest as go-digest does: `<algorithm>:<hex>` with a registered
/// algorithm and the right length of lowercase hex.
pub fn validate_digest(d: &str) -> std::result::Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("invalid checksum digest format".into());
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm".into()),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("invalid checksum digest length".into());
    }
    Ok(())
}

/// containerd's `validateImage`: a name, valid labels, and a target with a
/// valid digest, a positive size and a media type.
fn validate_image(image: &Image) -> Result<()> {
    if image.name.is_empty() {
        return Err(Error::InvalidArgument(
            "image name must not be empty".into(),
        ));
    }
    validate_labels("image.Labels", &image.labels)?;
    validate_target(&image.target)
}

fn validate_target(t: &Descriptor) -> Result<()> {
    validate_digest(&t.digest).map_err(|e| {
        Error::InvalidArgument(format!("Target.Digest {:?} invalid: {e}", t.digest))
    })?;
    if t.size <= 0 {
        return Err(Error::InvalidArgument(
            "Target.Size must be greater than zero".into(),
        ));
    }
    if t.media_type.is_empty() {
        return Err(Error::InvalidArgument(
            "Target.MediaType must be set".into(),
        ));
    }
    Ok(())
}

struct ImageFields<'a>(&'a Image);

impl Adaptor for ImageFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let img = self.0;
        let non_empty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        match path.first().map(String::as_str)? {
            "name" => non_empty(&img.name),
            "target" => match path.get(1).map(String::as_str)? {
                "digest" => non_empty(&img.target.digest),
                "mediatype" => non_empty(&img.target.media_type),
                _ => None,
            },
            "labels" => check_map(&path[1..], &img.labels),
            "annotations" => check_map(&path[1..], &img.target.annotations),
            _ => None,
        }
    }
}

/// Image operations; from [`Db::images`].
#[derive(Clone, Copy)]
pub struct Images<'a> {
    db: &'a Db,
}

impl Db {
    /// Image operations.
    pub fn images(&self) -> Images<'_> {
        Images { db: self }
    }
}

impl Images<'_> {
    /// The namespace's image `name`; `NotFound` if absent.
    pub fn get(&self, ns: &str, name: &str) -> Result<Image> {
        validate_identifier("namespace", ns)?;
        self.db.view(|tx| {
            let r: ImageRecord =
                schema::get_json(tx, &image_key(ns, name))?.ok_or_else(|| not_found(name))?;
            Ok(image_of(name, r))
        })
    }

    /// The namespace's images matching any of `filters` (fields `name`,
    /// `target.digest`, `target.mediatype`, `labels.<k>`, `annotations.<k>`),
    /// sorted by name.
    pub fn list<S: AsRef<str>>(&self, ns: &str, filters: &[S]) -> Result<Vec<Image>> {
        validate_identifier("namespace", ns)?;
        let filter = filters::parse_all(filters)?;
        self.db.view(|tx| {
            let mut out = Vec::new();
            schema::scan_children(tx, &images_prefix(ns), 1, |k, rest, v| {
                let img = image_of(&rest[0], schema::decode_json(k, v)?);
                if filter.matches(&ImageFields(&img)) {
                    out.push(img);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Creates an image; `AlreadyExists` if the name is taken. Held by
    /// `lease` if given (`NotFound` if the lease does not exist), as
    /// containerd adds images created under a lease to it.
    pub fn create(&self, ns: &str, image: Image, lease: Option<&str>) -> Result<Image> {
        validate_identifier("namespace", ns)?;
        validate_image(&image)?;
        let lease = lease.filter(|l| !l.is_empty());
        self.db.update(|tx| {
            let key = image_key(ns, &image.name);
            if tx.get(&key)?.is_some() {
                return Err(Error::AlreadyExists(format!("image {:?}", image.name)));
            }
            schema::ensure_namespace(tx, ns)?;
            if let Some(lease) = lease {
                add_lease_resource(tx, ns, lease, &[IMAGES.into(), image.name.clone()])?;
            }
            let now = SystemTime::now();
            let mut labels = image.labels;
            normalize_labels(&mut labels);
            let record = ImageRecord {
                labels,
                target: image.target,
                created_at: now,
                updated_at: now,
            };
            schema::put_json(tx, &key, &record)?;
            Ok(image_of(&image.name, record))
        })
    }

    /// Updates an image. `paths` is a field mask: `labels`, `labels.<k>`,
    /// `target` (replaced as a unit), `annotations` (the target's, all),
    /// `annotations.<k>`; no paths replaces labels and target. `NotFound` if
    /// absent; `InvalidArgument` for another path or an invalid result.
    pub fn update(&self, ns: &str, image: Image, paths: &[String]) -> Result<Image> {
        validate_identifier("namespace", ns)?;
        if image.name.is_empty() {
            return Err(Error::InvalidArgument(
                "image name is required for update".into(),
            ));
        }
        let name = image.name.clone();
        self.db.update(|tx| {
            let key = image_key(ns, &name);
            let current: ImageRecord =
                schema::get_json(tx, &key)?.ok_or_else(|| not_found(&name))?;
            let mut next = image_of(&name, current.clone());
            if paths.is_empty() {
                next.labels = image.labels.clone();
                next.target = image.target.clone();
            }
            for path in paths {
                if let Some(k) = path.strip_prefix("labels.") {
                    set_or_remove(&mut next.labels, k, image.labels.get(k))?;
                } else if let Some(k) = path.strip_prefix("annotations.") {
                    set_or_remove(
                        &mut next.target.annotations,
                        k,
                        image.target.annotations.get(k),
                    )?;
                } else {
                    match path.as_str() {
                        "labels" => next.labels = image.labels.clone(),
                        "target" => next.target = image.target.clone(),
                        "annotations" => next.target.annotations = image.target.annotations.clone(),
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "cannot update {path:?} field on image {name:?}"
                            )))
                        }
                    }
                }
            }
            normalize_labels(&mut next.labels);
            validate_image(&next)?;
            let record = ImageRecord {
                labels: next.labels,
                target: next.target,
                created_at: current.created_at,
                updated_at: SystemTime::now(),
            };
            schema::put_json(tx, &key, &record)?;
            Ok(image_of(&name, record))
        })
    }

    /// Deletes an image (and its place in `lease`). With `target` (a digest),
    /// only if the image still points at it (`NotFound` otherwise, as
    /// containerd). What the image kept alive goes at the next GC.
    pub fn delete(
        &self,
        ns: &str,
        name: &str,
        target: Option<&str>,
        lease: Option<&str>,
    ) -> Result<()> {
        validate_identifier("namespace", ns)?;
        self.db.update(|tx| {
            let key = image_key(ns, name);
            let r: ImageRecord = schema::get_json(tx, &key)?.ok_or_else(|| not_found(name))?;
            if let Some(t) = target.filter(|t| !t.is_empty()) {
                if r.target.digest != t {
                    return Err(Error::NotFound(format!(
                        "image {name:?} has target {}, not {t}",
                        r.target.digest
                    )));
                }
            }
            tx.delete(&key)?;
            if let Some(lease) = lease.filter(|l| !l.is_empty()) {
                remove_lease_resource(tx, ns, lease, &[IMAGES, name])?;
            }
            Ok(())
        })
    }
}

fn set_or_remove(map: &mut Labels, key: &str, value: Option<&String>) -> Result<()> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => {
            validate_label(key, v)?;
            map.insert(key.to_string(), v.clone());
        }
        None => {
            map.remove(key);
        }
    }
    Ok(())
}

/// GC: the images of `ns` that are roots (all but those whose
/// `containerd.io/gc.expire` has passed), by name.
pub(crate) fn gc_roots<R: ReadTxn + ?Sized>(
    tx: &R,
    ns: &str,
    now: SystemTime,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    schema::scan_children(tx, &images_prefix(ns), 1, |k, rest, v| {
        let r: ImageRecord = schema::decode_json(k, v)?;
        let expired = r
            .labels
            .get(LABEL_GC_EXPIRE)
            .and_then(|t| parse_rfc3339(t))
            .is_some_and(|t| now > t);
        if !expired {
            out.push(rest[0].clone());
        }
        Ok(())
    })?;
    Ok(out)
}

/// GC: every image of `ns`, by name.
pub(crate) fn gc_all<R: ReadTxn + ?Sized>(tx: &R, ns: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    schema::scan_children(tx, &images_prefix(ns), 1, |_, rest, _| {
        out.push(rest[0].clone());
        Ok(())
    })?;
    Ok(out)
}

/// GC: an image's outgoing edges: its target digest and its labels.
pub(crate) fn gc_edges<R: ReadTxn + ?Sized>(
    tx: &R,
    ns: &str,
    name: &str,
) -> Result<Option<(String, Labels)>> {
    Ok(
        schema::get_json::<ImageRecord, _>(tx, &image_key(ns, name))?
            .map(|r| (r.target.digest, r.labels)),
    )
}

/// GC: removes an image record.
pub(crate) fn gc_remove<W: WriteTxn + ?Sized>(tx: &mut W, ns: &str, name: &str) -> Result<()> {
    tx.delete(&image_key(ns, name))?;
    Ok(())
}
