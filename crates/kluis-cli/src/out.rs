//! What a command prints: readable lines, or one JSON value with `--json`.

use std::io::Write;

use serde_json::Value;

/// The result of a command.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable lines (standard output).
    pub lines: Vec<String>,
    /// The same as JSON.
    pub json: Value,
    /// Nothing to print (the command wrote its own output, e.g. JSONL to standard output).
    pub silent: bool,
}

impl Report {
    /// A report.
    pub fn new(json: Value) -> Self {
        Self { lines: Vec::new(), json, silent: false }
    }

    /// A report that prints nothing.
    pub fn silent() -> Self {
        Self { lines: Vec::new(), json: Value::Null, silent: true }
    }

    /// Adds a line.
    pub fn line(&mut self, s: impl Into<String>) -> &mut Self {
        self.lines.push(s.into());
        self
    }

    /// Prints it.
    pub fn print(&self, json: bool) -> std::io::Result<()> {
        if self.silent {
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if json {
            writeln!(out, "{}", self.json)?;
        } else {
            for l in &self.lines {
                writeln!(out, "{l}")?;
            }
        }
        out.flush()
    }
}

/// Formats rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = vec![fmt(header.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.iter().map(|r| fmt(r.clone())));
    out
}

/// A progress bar on standard error with `template` (indicatif's syntax) and message `msg`,
/// hidden unless standard error is a terminal and the output is not JSON.
pub fn progress_bar(json: bool, template: &str, msg: String) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = indicatif::ProgressBar::hidden();
    if !json && std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(msg);
    }
    bar
}
