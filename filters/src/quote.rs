//! Unquoting of Go-style string literals, extended (like containerd's
//! `pkg/filters/quote.go`) with `/` and `|` as double-quote-like delimiters
//! for regular expressions.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QuoteSyntax;

impl std::fmt::Display for QuoteSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("quote syntax error")
    }
}

/// Interprets `s` (including its delimiters) as a quoted literal.
pub(super) fn unquote(s: &str) -> Result<String, QuoteSyntax> {
    let b = s.as_bytes();
    let n = b.len();
    if n < 2 {
        return Err(QuoteSyntax);
    }
    let quote = b[0];
    if quote != b[n - 1] {
        return Err(QuoteSyntax);
    }
    let body = &s[1..n - 1];
    if quote == b'`' {
        if body.contains('`') {
            return Err(QuoteSyntax);
        }
        return Ok(body.replace('\r', ""));
    }
    if !matches!(quote, b'"' | b'\'' | b'|' | b'/') {
        return Err(QuoteSyntax);
    }
    if body.contains('\n') {
        return Err(QuoteSyntax);
    }
    if !body.contains('\\') && !body.as_bytes().contains(&quote) {
        match quote {
            b'"' | b'/' | b'|' => return Ok(body.to_string()),
            _ => {
                if body.chars().count() == 1 {
                    return Ok(body.to_string());
                }
            }
        }
    }

    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        let (value, tail) = unquote_char(rest, quote)?;
        match value {
            Unquoted::Byte(b) => out.push(b),
            Unquoted::Char(c) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        rest = tail;
        if quote == b'\'' && !rest.is_empty() {
            // single-quoted must be a single character
            return Err(QuoteSyntax);
        }
    }
    String::from_utf8(out).map_err(|_| QuoteSyntax)
}

enum Unquoted {
    Byte(u8),
    Char(char),
}

fn unquote_char(s: &str, quote: u8) -> Result<(Unquoted, &str), QuoteSyntax> {
    let b = s.as_bytes();
    let c = b[0];
    if c == quote && matches!(quote, b'\'' | b'"' | b'/' | b'|') {
        return Err(QuoteSyntax);
    }
    if c >= 0x80 {
        let ch = s.chars().next().ok_or(QuoteSyntax)?;
        return Ok((Unquoted::Char(ch), &s[ch.len_utf8()..]));
    }
    if c != b'\\' {
        return Ok((Unquoted::Byte(c), &s[1..]));
    }
    if b.len() <= 1 {
        return Err(QuoteSyntax);
    }
    let esc = b[1];
    let s = &s[2..];
    let simple = |v: u8| Ok((Unquoted::Byte(v), s));
    match esc {
        b'a' => simple(0x07),
        b'b' => simple(0x08),
        b'f' => simple(0x0c),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'v' => simple(0x0b),
        b'\\' => simple(b'\\'),
        b'\'' | b'"' | b'|' | b'/' => {
            if esc != quote {
                return Err(QuoteSyntax);
            }
            simple(esc)
        }
        b'x' | b'u' | b'U' => {
            let n = match esc {
                b'x' => 2,
                b'u' => 4,
                _ => 8,
            };
            let digits = s.get(..n).ok_or(QuoteSyntax)?;
            let mut v: u32 = 0;
            for d in digits.bytes() {
                let x = (d as char).to_digit(16).ok_or(QuoteSyntax)?;
                v = (v << 4) | x;
            }
            let tail = &s[n..];
            if esc == b'x' {
                // single byte, possibly not UTF-8
                return Ok((Unquoted::Byte(v as u8), tail));
            }
            let ch = char::from_u32(v).ok_or(QuoteSyntax)?;
            Ok((Unquoted::Char(ch), tail))
        }
        b'0'..=b'7' => {
            let mut v = u32::from(esc - b'0');
            let digits = s.get(..2).ok_or(QuoteSyntax)?;
            for d in digits.bytes() {
                if !(b'0'..=b'7').contains(&d) {
                    return Err(QuoteSyntax);
                }
                v = (v << 3) | u32::from(d - b'0');
            }
            if v > 255 {
                return Err(QuoteSyntax);
            }
            Ok((Unquoted::Byte(v as u8), &s[2..]))
        }
        _ => Err(QuoteSyntax),
    }
}
