//! Validation of identifiers and labels (containerd's `pkg/identifiers` and
//! `pkg/labels`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::error::{Error, Result};

/// Maximum identifier length in characters.
pub const MAX_IDENTIFIER_LEN: usize = 76;
/// Maximum size of a label's key plus value in bytes.
pub const MAX_LABEL_SIZE: usize = 4096;
const LABEL_KEY_IN_MESSAGE: usize = 64;

const IDENTIFIER_PATTERN: &str = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

static IDENTIFIER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(IDENTIFIER_PATTERN).expect("identifier pattern is valid"));

/// Checks an identifier (namespace, lease id, ...): alphanumerics separated by
/// single `.`, `_` or `-`, at most 76 characters. `what` names it in messages.
pub fn validate_identifier(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what}: identifier must not be empty"
        )));
    }
    if s.chars().count() > MAX_IDENTIFIER_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what}: identifier {s:?} greater than maximum length ({MAX_IDENTIFIER_LEN} characters)"
        )));
    }
    if !IDENTIFIER_RE.is_match(s) {
        return Err(Error::InvalidArgument(format!(
            "{what}: identifier {s:?} must match {IDENTIFIER_PATTERN}"
        )));
    }
    Ok(())
}

/// Longest lease id accepted.
pub const MAX_LEASE_ID_LEN: usize = 1024;

/// Checks a lease id. Much looser than [`validate_identifier`] on purpose:
/// containerd accepts any non-empty id, and its clients rely on that (random
/// ids like `123456789-a_-Z`, `ctr images mount` using the target path).
/// Refused: empty, longer than 1024 bytes, control characters.
pub fn validate_lease_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(
            "lease id: identifier must not be empty".into(),
        ));
    }
    if id.len() > MAX_LEASE_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "lease id: identifier greater than maximum length ({MAX_LEASE_ID_LEN} bytes)"
        )));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "lease id: identifier {id:?} must not contain control character {c:?}"
        )));
    }
    Ok(())
}

/// Checks one label: key plus value at most 4096 bytes.
pub fn validate_label(key: &str, value: &str) -> Result<()> {
    let total = key.len() + value.len();
    if total > MAX_LABEL_SIZE {
        let mut end = key.len().min(LABEL_KEY_IN_MESSAGE);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        return Err(Error::InvalidArgument(format!(
            "label key and value length ({total} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
            &key[..end]
        )));
    }
    Ok(())
}

/// Checks every label; `what` prefixes the message (e.g. `namespace.Labels`).
pub fn validate_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        validate_label(k, v).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{what}: {m}")),
            other => other,
        })?;
    }
    Ok(())
}

/// Drops labels with empty values: containerd never stores them (setting a
/// label to "" removes it).
pub(crate) fn normalize_labels(labels: &mut BTreeMap<String, String>) {
    labels.retain(|_, v| !v.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    #[test]
    fn identifiers() {
        for ok in [
            "a",
            "default",
            "k8s.io",
            "foo_bar-baz.1",
            "0",
            "A9",
            &"a".repeat(76),
        ] {
            validate_identifier("namespace", ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a b",
            "ä",
            ".a",
            "a__b",
            &"a".repeat(77),
        ] {
            let e = validate_identifier("namespace", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().starts_with("namespace: identifier"), "{e}");
        }
    }

    #[test]
    fn labels() {
        validate_label("k", &"v".repeat(4095)).unwrap();
        let e = validate_label("kk", &"v".repeat(4095)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("4097 bytes"), "{e}");
    }
}
