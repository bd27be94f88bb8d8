//! Output helpers: aligned tables, JSON, human-readable sizes, ages and timestamps.
//!
//! Everything goes through `writeln!` on a locked stdout (never `println!`, which panics on a
//! closed pipe); a broken pipe surfaces as an io error that `main` treats as success.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use serde_json::Value;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON with stable field names for programs.
    Json,
}

/// A table with a header row; columns are padded to the widest cell, the last one is not.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

const COLUMN_GAP: usize = 3;

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = width - cell.chars().count() + COLUMN_GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(self.render().as_bytes())?;
        out.flush()
    }
}

/// Prints one line on stdout.
pub fn line(text: impl std::fmt::Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Prints indented JSON (a document: one object or array).
pub fn json(value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    line(text)
}

/// Prints compact JSON on one line (a stream of objects, e.g. events).
pub fn json_line(value: &Value) -> io::Result<()> {
    line(value)
}

/// Sizes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_size(bytes: i64) -> String {
    if bytes < 0 {
        return "-".to_string();
    }
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Durations for people, like Docker's `HumanDuration`: `5 seconds`, `About an hour`, `3 days`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (minutes, hours) = (secs / 60, secs / 3600);
    let days = hours / 24;
    match () {
        _ if secs < 1 => "Less than a second".to_string(),
        _ if secs == 1 => "1 second".to_string(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{days} days"),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", days / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    }
}

/// How long ago `ts` was, for an AGE column; `-` if unknown.
pub fn age(ts: Option<&Timestamp>) -> String {
    age_at(ts, SystemTime::now())
}

fn age_at(ts: Option<&Timestamp>, now: SystemTime) -> String {
    let Some(then) = ts.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".to_string();
    };
    match now.duration_since(then) {
        Ok(d) => human_duration(d),
        Err(_) => "Less than a second".to_string(),
    }
}

/// RFC 3339 (UTC); `-` if unset.
pub fn timestamp(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(|| "-".to_string(), ToString::to_string)
}

/// RFC 3339 string, or null.
pub fn timestamp_json(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// Labels as `k=v,k=v` sorted by key; `-` if none.
pub fn labels(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels as a JSON object (keys sorted).
pub fn labels_json(labels: &HashMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "LABELS"]);
        t.row(vec!["default".into(), "-".into()]);
        t.row(vec!["x".into(), "a=b".into()]);
        assert_eq!(
            t.render(),
            "NAME      LABELS\n\
             default   -\n\
             x         a=b\n"
        );
    }

    #[test]
    fn tables_count_chars_not_bytes_and_tolerate_short_rows() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["µµ".into(), "1".into(), "z".into()]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A    B   C\nµµ   1   z\nx\n");
    }

    #[test]
    fn empty_table_prints_header() {
        assert_eq!(Table::new(&["DIGEST", "SIZE"]).render(), "DIGEST   SIZE\n");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 << 20), "12.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(i64::MAX), "8.0 EiB");
        assert_eq!(human_size(-1), "-");
    }

    #[test]
    fn human_durations() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(10)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(42)), "42 seconds");
        assert_eq!(human_duration(s(90)), "About a minute");
        assert_eq!(human_duration(s(600)), "10 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(21 * 86400)), "3 weeks");
        assert_eq!(human_duration(s(90 * 86400)), "3 months");
        assert_eq!(human_duration(s(800 * 86400)), "2 years");
    }

    #[test]
    fn ages_and_timestamps() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_120);
        assert_eq!(age_at(Some(&ts), now), "2 minutes");
        assert_eq!(age_at(None, now), "-");
        assert_eq!(timestamp(Some(&ts)), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp(None), "-");
        assert_eq!(timestamp_json(None), Value::Null);
    }

    #[test]
    fn labels_sorted() {
        let mut m = HashMap::new();
        assert_eq!(labels(&m), "-");
        m.insert("b".to_string(), "2".to_string());
        m.insert("a".to_string(), "1".to_string());
        assert_eq!(labels(&m), "a=1,b=2");
        assert_eq!(labels_json(&m).to_string(), r#"{"a":"1","b":"2"}"#);
    }
}
