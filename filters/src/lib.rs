//! containerd's filter syntax (`pkg/filters`): parser and matcher.
//!
//! A filter string is a comma-separated list of selectors that must all match
//! (AND); [`parse_all`] takes several filter strings and matches if any of them
//! does (OR). A selector is
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)
//! fieldpath := field ('.' field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := Go string syntax ("..."), and for `~=` also /.../ or |...|
//! ```
//!
//! `field` alone tests presence; `==` equality; `!=` inequality (an absent
//! field counts as the empty string); `~=` a regular expression (compiled when
//! parsing, so a bad one is a parse error). Examples: `name==foo`,
//! `labels."a.b"==x`, `labels.foo,digest~=^sha256:`, `topic~=|^/tasks/|`.
//!
//! Objects are matched through [`Adaptor`], which maps a field path to a value.
//! This module knows nothing of the objects it filters; the daemon reuses it
//! for event filters (`topic`, `namespace`, `event.*`).

mod quote;
mod scanner;

use std::collections::BTreeMap;
use std::fmt;

use berth_errdefs::{Classify, ErrorKind};
use regex::Regex;

use scanner::{Ch, Scanner, Token};

/// Maps a field path (e.g. `["labels", "foo"]`) to the object's value there,
/// or `None` if the field is absent.
pub trait Adaptor {
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<F> Adaptor for F
where
    F: Fn(&[String]) -> Option<String>,
{
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

/// Looks up a label for the rest of a field path: the components are joined
/// with `.` (so `labels.a.b` finds the label `a.b`), as containerd does.
pub fn check_map(rest: &[String], labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() || rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

/// A selector's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// The field is present (no operator given).
    Present,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `~=` (regular expression)
    Matches,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::Present => "?",
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
            Operator::Matches => "~=",
        })
    }
}

/// One `fieldpath op value` test.
#[derive(Debug, Clone)]
pub struct Selector {
    pub fieldpath: Vec<String>,
    pub operator: Operator,
    pub value: String,
    re: Option<Regex>,
}

impl Selector {
    /// True if the object behind `adaptor` satisfies this selector.
    pub fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        let value = adaptor.field(&self.fieldpath);
        match self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal => value.as_deref() == Some(self.value.as_str()),
            Operator::NotEqual => value.as_deref().unwrap_or("") != self.value,
            Operator::Matches => match &self.re {
                Some(re) => re.is_match(value.as_deref().unwrap_or("")),
                None => false,
            },
        }
    }
}

/// A parsed filter: matches if any alternative has all its selectors match.
/// An alternative with no selectors matches everything.
#[derive(Debug, Clone)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::always()
    }
}

impl Filter {
    /// The filter that matches everything (what `""` and no filters parse to).
    pub fn always() -> Filter {
        Filter {
            any: vec![Vec::new()],
        }
    }

    /// True if this filter matches everything.
    pub fn is_always(&self) -> bool {
        self.any.iter().any(|all| all.is_empty())
    }

    /// True if the object behind `adaptor` matches.
    pub fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        self.any
            .iter()
            .any(|all| all.iter().all(|s| s.matches(adaptor)))
    }

    /// The alternatives (OR) of selector lists (AND).
    pub fn alternatives(&self) -> &[Vec<Selector>] {
        &self.any
    }
}

/// A filter string that did not parse. Displays like containerd:
/// `filters: parse error: [name== >|,|< x]: expected value or quoted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The whole filter string.
    pub input: String,
    /// Byte offset of the offending character.
    pub pos: usize,
    /// What was wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = &self.input;
        match input.get(self.pos..).and_then(|s| s.chars().next()) {
            Some(c) if input.is_char_boundary(self.pos) => {
                let end = self.pos + c.len_utf8();
                write!(
                    f,
                    "filters: parse error: [{} >|{}|< {}]: {}",
                    &input[..self.pos],
                    &input[self.pos..end],
                    &input[end..],
                    self.msg
                )
            }
            _ => write!(f, "filters: parse error: [{input}]: {}", self.msg),
        }
    }
}

impl std::error::Error for ParseError {}

impl Classify for ParseError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// Parses one filter string (selectors joined by `,`, all must match).
/// The empty string matches everything.
pub fn parse(input: &str) -> Result<Filter, ParseError> {
    if input.is_empty() {
        return Ok(Filter::always());
    }
    let mut p = Parser {
        input,
        scanner: Scanner::new(input),
    };
    Ok(Filter {
        any: vec![p.selectors()?],
    })
}

/// Parses several filter strings; the result matches if any of them does.
/// No filter strings match everything.
pub fn parse_all<S: AsRef<str>>(inputs: &[S]) -> Result<Filter, ParseError> {
    if inputs.is_empty() {
        return Ok(Filter::always());
    }
    let mut any = Vec::with_capacity(inputs.len());
    for s in inputs {
        any.extend(parse(s.as_ref())?.any);
    }
    Ok(Filter { any })
}

struct Parser<'a> {
    input: &'a str,
    scanner: Scanner<'a>,
}

impl Parser<'_> {
    fn err(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            input: self.input.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    fn scanner_err(&self) -> &'static str {
        self.scanner.err.unwrap_or("illegal input")
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, ParseError> {
        let mut all = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Ch::Char(',') => {
                    let (pos, tok, _) = self.scanner.scan();
                    if tok != Token::Separator {
                        return Err(self.err(pos, "expected a separator"));
                    }
                    all.push(self.selector()?);
                }
                Ch::Eof => break,
                other => {
                    let text = match other {
                        Ch::Char(c) => c.to_string(),
                        _ => String::new(),
                    };
                    return Err(self.err(self.scanner.ppos, format!("unexpected input: {text}")));
                }
            }
        }
        Ok(all)
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let fieldpath = self.fieldpath()?;
        if let Ch::Char(',') | Ch::Eof = self.scanner.peek() {
            return Ok(Selector {
                fieldpath,
                operator: Operator::Present,
                value: String::new(),
                re: None,
            });
        }
        let operator = self.operator()?;
        let (pos, value) = self.value(operator == Operator::Matches)?;
        let re =
            if operator == Operator::Matches {
                Some(Regex::new(&value).map_err(|e| {
                    self.err(pos, format!("invalid regular expression {value:?}: {e}"))
                })?)
            } else {
                None
            };
        Ok(Selector {
            fieldpath,
            operator,
            value,
            re,
        })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, ParseError> {
        let mut fs = vec![self.field()?];
        while let Ch::Char('.') = self.scanner.peek() {
            let (pos, tok, _) = self.scanner.scan();
            if tok != Token::Separator {
                return Err(self.err(pos, "expected a field separator (`.`)"));
            }
            fs.push(self.field()?);
        }
        Ok(fs)
    }

    fn field(&mut self) -> Result<String, ParseError> {
        let (pos, tok, s) = self.scanner.scan();
        match tok {
            Token::Field => Ok(s.to_string()),
            Token::Quoted => self.unquote(pos, s, false),
            Token::Illegal => Err(self.err(pos, self.scanner_err())),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }

    fn operator(&mut self) -> Result<Operator, ParseError> {
        let (pos, tok, s) = self.scanner.scan();
        match tok {
            Token::Operator => match s {
                "==" => Ok(Operator::Equal),
                "!=" => Ok(Operator::NotEqual),
                "~=" => Ok(Operator::Matches),
                _ => Err(self.err(pos, format!("unsupported operator {s:?}"))),
            },
            Token::Illegal => Err(self.err(pos, self.scanner_err())),
            _ => Err(self.err(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        }
    }

    fn value(&mut self, allow_alt_quotes: bool) -> Result<(usize, String), ParseError> {
        let (pos, tok, s) = self.scanner.scan();
        match tok {
            Token::Value | Token::Field => Ok((pos, s.to_string())),
            Token::Quoted => Ok((pos, self.unquote(pos, s, allow_alt_quotes)?)),
            Token::Illegal => Err(self.err(pos, self.scanner_err())),
            _ => Err(self.err(pos, "expected value or quoted")),
        }
    }

    fn unquote(&self, pos: usize, s: &str, allow_alts: bool) -> Result<String, ParseError> {
        if !allow_alts && !s.starts_with(['\'', '"']) {
            return Err(self.err(pos, "invalid quote encountered"));
        }
        quote::unquote(s).map_err(|e| self.err(pos, format!("unquoting failed: {e}")))
    }
}

#[cfg(test)]
mod tests;
