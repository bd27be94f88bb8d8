//! Parsing of command-line values: `key=value` labels and durations.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::bail;

/// Parses `key=value` (the value may be empty).
pub fn label(arg: &str) -> anyhow::Result<(String, String)> {
    match arg.split_once('=') {
        Some(("", _)) => bail!("invalid label {arg:?}: empty key"),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => bail!("invalid label {arg:?}: expected key=value"),
    }
}

/// Parses labels to set; later arguments win.
pub fn labels<S: AsRef<str>>(args: &[S]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter().map(|a| label(a.as_ref())).collect()
}

/// Label edits as an Update request carries them: `key=value` sets, `key=` removes.
pub struct LabelUpdate {
    /// The labels set.
    pub labels: HashMap<String, String>,
    /// `labels.<key>` for every key given: a key in the mask but not set is removed.
    pub mask: prost_types::FieldMask,
}

/// Parses label edits (`key=value`, `key=`) into a [`LabelUpdate`].
pub fn label_update<S: AsRef<str>>(args: &[S]) -> anyhow::Result<LabelUpdate> {
    let edits = args
        .iter()
        .map(|a| label(a.as_ref()))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    Ok(LabelUpdate {
        mask: prost_types::FieldMask {
            paths: edits.keys().map(|k| format!("labels.{k}")).collect(),
        },
        labels: edits.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
    })
}

const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86400.0),
    ("w", 7.0 * 86400.0),
];

/// Parses a duration like Go's `time.ParseDuration`, plus days and weeks: `24h`, `1h30m`,
/// `1.5h`, `500ms`, `7d`, `2w`. A bare `0` is zero.
pub fn duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?} (examples: 30s, 1h30m, 24h, 7d)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(err)?;
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Formats a duration compactly: `1h30m`, `10s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(label("a=").unwrap(), ("a".into(), String::new()));
        assert!(label("a")
            .unwrap_err()
            .to_string()
            .contains("expected key=value"));
        assert!(label("=b").unwrap_err().to_string().contains("empty key"));
        let m = labels(&["x=1", "y=2", "x=3"]).unwrap();
        assert_eq!(m.get("x").map(String::as_str), Some("3"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn label_update_removes_on_empty_value() {
        let u = label_update(&["keep=1", "drop=", "keep=2"]).unwrap();
        assert_eq!(u.labels.len(), 1);
        assert_eq!(u.labels["keep"], "2");
        assert_eq!(u.mask.paths, ["labels.drop", "labels.keep"]);
        assert!(label_update(&["bad"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(duration("2w").unwrap(), Duration::from_secs(14 * 86400));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        for bad in ["", "h", "10", "10x", "1..5h", "-1h", "1h-", "abc"] {
            assert!(duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }
}
