//! Timestamps: nanosecond-precision serde encoding and RFC 3339 parsing (for
//! `containerd.io/gc.expire`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Serde for `SystemTime` as `[seconds, nanoseconds]` since the Unix epoch
/// (seconds may be negative; nanoseconds are always in `0..1e9`).
pub(crate) mod nanos {
    use super::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn split(t: SystemTime) -> (i64, u32) {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                (secs, nanos)
            }
        }
    }

    pub(crate) fn join(secs: i64, nanos: u32) -> Option<SystemTime> {
        if nanos >= 1_000_000_000 {
            return None;
        }
        if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
                .checked_add(Duration::from_nanos(u64::from(nanos)))
        }
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        split(*t).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
        join(secs, nanos).ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
    }

    /// The same for `Option<SystemTime>`.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            t.map(split).serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            match Option::<(i64, u32)>::deserialize(d)? {
                None => Ok(None),
                Some((secs, nanos)) => join(secs, nanos)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom("timestamp out of range")),
            }
        }
    }
}

/// Parses an RFC 3339 timestamp as Go's `time.Parse(time.RFC3339, s)` accepts
/// it: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let min = num(14, 2)?;
    let sec = num(17, 2)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(10) != Some(&b'T')
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = digits.parse().ok()?;
    }
    let offset_secs = match b.get(i) {
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let oh = num(i + 1, 2)?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    nanos::join(secs, nanos)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> (i64, u32) {
        nanos::split(t)
    }

    #[test]
    fn rfc3339() {
        assert_eq!(secs(parse_rfc3339("1970-01-01T00:00:00Z").unwrap()), (0, 0));
        assert_eq!(
            secs(parse_rfc3339("2021-03-04T05:06:07Z").unwrap()),
            (1_614_834_367, 0)
        );
        assert_eq!(
            secs(parse_rfc3339("2021-03-04T05:06:07.5+01:00").unwrap()),
            (1_614_834_367 - 3600, 500_000_000)
        );
        assert_eq!(
            secs(parse_rfc3339("1969-12-31T23:59:59.25Z").unwrap()),
            (-1, 250_000_000)
        );
        assert_eq!(
            secs(parse_rfc3339("2000-02-29T00:00:00-00:30").unwrap()),
            (951_782_400 + 1800, 0)
        );
        for bad in [
            "",
            "2021-03-04",
            "2021-03-04 05:06:07Z",
            "2021-02-30T00:00:00Z",
            "2021-03-04T05:06:07",
            "2021-03-04T05:06:07.Z",
            "2021-03-04T05:06:07+0100",
            "2021-03-04T25:06:07Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nanos_roundtrip() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 1),
        ] {
            let (s, n) = nanos::split(t);
            assert_eq!(nanos::join(s, n), Some(t));
        }
    }
}
