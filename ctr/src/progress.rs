//! A one-line progress bar on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::output::human_size;

const WIDTH: usize = 30;
const LABEL_WIDTH: usize = 32;
const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    enabled: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar for `total` bytes; disabled if the size is unknown or stderr is not a terminal.
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let total = total.unwrap_or(0);
        Progress {
            label: shorten(label, LABEL_WIDTH),
            total,
            done: 0,
            enabled: total > 0 && std::io::stderr().is_terminal(),
            last_draw: None,
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < REDRAW_EVERY)
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
            self.enabled = false;
        }
    }

    fn draw(&self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}\x1b[K",
            render(&self.label, self.done, self.total)
        );
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Leave the terminal on a fresh line if we stop halfway (errors print next).
        if self.enabled && self.last_draw.is_some() {
            eprintln!();
        }
    }
}

/// Cuts `s` to `max` characters, ending in `…` if cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `label [=========>          ]  45%  12.3 MiB / 27.0 MiB`
pub fn render(label: &str, done: u64, total: u64) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let bar: String = (0..WIDTH)
        .map(|i| match i {
            _ if i + 1 < filled || (i + 1 == filled && filled == WIDTH) => '=',
            _ if i + 1 == filled => '>',
            _ => ' ',
        })
        .collect();
    format!(
        "{label} [{bar}] {:>3}%  {} / {}",
        (fraction * 100.0).floor() as u64,
        human_size(i64::try_from(done).unwrap_or(i64::MAX)),
        human_size(i64::try_from(total).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_labels() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 5), "abcd…");
    }

    #[test]
    fn renders_bar() {
        let half = render("x", 512, 1024);
        assert_eq!(
            half,
            format!(
                "x [{}>{}]  50%  512 B / 1.0 KiB",
                "=".repeat(14),
                " ".repeat(15)
            )
        );
        let full = render("x", 1024, 1024);
        assert!(full.starts_with(&format!("x [{}] 100%", "=".repeat(WIDTH))));
        let empty = render("x", 0, 1024);
        assert!(empty.starts_with(&format!("x [{}]   0%", " ".repeat(WIDTH))));
        // More than announced: clamp.
        assert!(render("x", 4096, 1024).contains("100%"));
    }
}
