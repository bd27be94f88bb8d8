//! Content digests. Only `sha256` is supported, the canonical OCI algorithm.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The only algorithm the store accepts.
pub const ALGORITHM: &str = "sha256";

const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Ordering and hashing follow the raw bytes, which is the same order as the
/// canonical string form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses the canonical form `sha256:<64 lowercase hex>`.
    ///
    /// Errors are [`ErrorKind::InvalidArgument`](berth_errdefs::ErrorKind)
    /// and say what is wrong with the input.
    pub fn parse(s: &str) -> Result<Digest> {
        let invalid = |reason: String| Error::InvalidDigest {
            input: s.to_string(),
            reason,
        };
        let Some((alg, encoded)) = s.split_once(':') else {
            return Err(invalid(
                "missing algorithm prefix (expected sha256:<hex>)".into(),
            ));
        };
        if alg != ALGORITHM {
            return Err(invalid(format!("unsupported digest algorithm {alg:?}")));
        }
        if encoded.len() != HEX_LEN {
            return Err(invalid(format!(
                "invalid encoded length {} (sha256 needs {HEX_LEN} hex characters)",
                encoded.len()
            )));
        }
        if let Some(c) = encoded
            .chars()
            .find(|c| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(invalid(format!(
                "invalid character {c:?} in encoded portion (lowercase hex only)"
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(encoded, &mut bytes).map_err(|e| invalid(e.to_string()))?;
        Ok(Digest(bytes))
    }

    /// Wraps a raw sha256 hash.
    pub fn from_sha256(bytes: &[u8; 32]) -> Digest {
        Digest(*bytes)
    }

    /// The digest of `data`.
    pub fn of_bytes(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The algorithm name, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        ALGORITHM
    }

    /// The 64 lowercase hex characters after `sha256:`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_hasher(hasher: &Sha256) -> Digest {
        Digest(hasher.clone().finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Digest, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest string sha256:<64 lowercase hex>")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Digest, E> {
                Digest::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_digest_round_trips() {
        let d = Digest::of_bytes(b"");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::parse(EMPTY).unwrap(), d);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(Digest::from_sha256(d.as_bytes()), d);
    }

    #[test]
    fn malformed_digests_are_invalid_argument() {
        let cases = [
            ("", "missing algorithm"),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "missing algorithm",
            ),
            (
                "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "unsupported",
            ),
            (
                "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "unsupported",
            ),
            ("sha256:", "length"),
            ("sha256:e3b0", "length"),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85500",
                "length",
            ),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "character",
            ),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "character",
            ),
            (
                "sha256:../0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "character",
            ),
            (
                "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
                "character",
            ),
        ];
        for (input, needle) in cases {
            let err = Digest::parse(input).expect_err(input);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input}");
            let msg = err.to_string();
            assert!(msg.contains(needle), "{input}: {msg}");
        }
    }

    #[test]
    fn serde_as_string() {
        let d = Digest::of_bytes(b"hello");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    #[test]
    fn ordering_matches_string_order() {
        let mut ds: Vec<Digest> = (0u8..20).map(|i| Digest::of_bytes(&[i])).collect();
        ds.sort();
        let strs: Vec<String> = ds.iter().map(|d| d.to_string()).collect();
        let mut sorted = strs.clone();
        sorted.sort();
        assert_eq!(strs, sorted);
    }
}
