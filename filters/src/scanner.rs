//! Tokenizer for the filter syntax (a port of containerd's `pkg/filters/scanner.go`).

/// One scanned character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ch {
    Eof,
    Illegal,
    Char(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    Eof,
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    Illegal,
    Other(char),
}

pub(super) struct Scanner<'a> {
    pub(super) input: &'a str,
    /// Start of the current character.
    pub(super) pos: usize,
    /// End of the current character (start of the next).
    pub(super) ppos: usize,
    /// The next non-separator token is a value (after an operator).
    value: bool,
    pub(super) err: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(input: &'a str) -> Scanner<'a> {
        Scanner {
            input,
            pos: 0,
            ppos: 0,
            value: false,
            err: None,
        }
    }

    fn next(&mut self) -> Ch {
        if self.pos >= self.input.len() {
            return Ch::Eof;
        }
        self.pos = self.ppos;
        match self.input[self.ppos..].chars().next() {
            None => Ch::Eof,
            Some(c) => {
                self.ppos += c.len_utf8();
                if c == '\0' {
                    self.error("unexpected null");
                    Ch::Illegal
                } else {
                    Ch::Char(c)
                }
            }
        }
    }

    pub(super) fn peek(&mut self) -> Ch {
        let (pos, ppos) = (self.pos, self.ppos);
        let ch = self.next();
        self.pos = pos;
        self.ppos = ppos;
        ch
    }

    /// Returns the token's start, its kind and its text.
    pub(super) fn scan(&mut self) -> (usize, Token, &'a str) {
        let mut ch = self.next();
        let mut pos = self.pos;
        loop {
            let c = match ch {
                Ch::Eof => return (self.pos, Token::Eof, ""),
                Ch::Illegal => return (self.pos, Token::Illegal, ""),
                Ch::Char(c) => c,
            };
            if is_quote_rune(c) {
                let ok = self.scan_quoted(c);
                let text = &self.input[pos..self.ppos];
                return (pos, if ok { Token::Quoted } else { Token::Illegal }, text);
            }
            if is_separator_rune(c) {
                self.value = false;
                return (pos, Token::Separator, &self.input[pos..self.ppos]);
            }
            if is_operator_rune(c) {
                self.scan_operator();
                self.value = true;
                return (pos, Token::Operator, &self.input[pos..self.ppos]);
            }
            if c.is_whitespace() {
                ch = self.next();
                pos = self.pos;
                continue;
            }
            if self.value {
                self.scan_value();
                self.value = false;
                return (pos, Token::Value, &self.input[pos..self.ppos]);
            }
            if is_field_rune(c) {
                self.scan_field();
                return (pos, Token::Field, &self.input[pos..self.ppos]);
            }
            return (self.pos, Token::Other(c), "");
        }
    }

    fn scan_field(&mut self) {
        while let Ch::Char(c) = self.peek() {
            if !is_field_rune(c) {
                break;
            }
            self.next();
        }
    }

    fn scan_operator(&mut self) {
        while let Ch::Char('=' | '!' | '~') = self.peek() {
            self.next();
        }
    }

    fn scan_value(&mut self) {
        while let Ch::Char(c) = self.peek() {
            if !is_value_rune(c) {
                break;
            }
            self.next();
        }
    }

    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut illegal = false;
        let mut ch = self.next();
        while ch != Ch::Char(quote) {
            match ch {
                Ch::Eof | Ch::Illegal | Ch::Char('\n') => {
                    self.error("quoted literal not terminated");
                    return false;
                }
                Ch::Char('\\') => {
                    let (next, legal) = self.scan_escape(quote);
                    ch = next;
                    if !legal {
                        illegal = true;
                    }
                }
                Ch::Char(_) => ch = self.next(),
            }
        }
        !illegal
    }

    fn scan_escape(&mut self, quote: char) -> (Ch, bool) {
        let ch = self.next();
        match ch {
            Ch::Char('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => (self.next(), true),
            Ch::Char(c) if c == quote => (self.next(), true),
            Ch::Char('0'..='7') => self.scan_digits(ch, 8, 3),
            Ch::Char('x') => {
                let c = self.next();
                self.scan_digits(c, 16, 2)
            }
            Ch::Char('u') => {
                let c = self.next();
                self.scan_digits(c, 16, 4)
            }
            Ch::Char('U') => {
                let c = self.next();
                self.scan_digits(c, 16, 8)
            }
            _ => {
                self.error("illegal escape sequence");
                (ch, false)
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Ch, base: u32, mut n: usize) -> (Ch, bool) {
        while n > 0 && digit_val(ch) < base {
            ch = self.next();
            n -= 1;
        }
        if n > 0 {
            self.error("illegal numeric escape sequence");
            return (ch, false);
        }
        (ch, true)
    }

    fn error(&mut self, msg: &'static str) {
        if self.err.is_none() {
            self.err = Some(msg);
        }
    }
}

fn digit_val(ch: Ch) -> u32 {
    match ch {
        Ch::Char(c) => c.to_digit(16).unwrap_or(16),
        _ => 16,
    }
}

fn is_field_rune(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_operator_rune(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_quote_rune(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}

fn is_separator_rune(c: char) -> bool {
    matches!(c, ',' | '.')
}

fn is_value_rune(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}
