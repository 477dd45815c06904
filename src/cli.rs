//! What the `entente` subcommands do once their arguments are parsed: read and check
//! input, talk to the node, print results. One file per group of commands; this file
//! holds what they share (output in text or JSON, input files, progress bars).
//!
//! Results go to stdout, as text or, with `--json`, as the JSON objects documented in
//! the README ("JSON output"); progress and warnings go to stderr (bars only on a
//! terminal). Nothing here decides policy or touches the store directly, except
//! `store recover`, which runs with the node stopped.

pub mod args;
pub mod item;
pub mod ledger;
pub mod policy;
pub mod publish;
pub mod query;
pub mod setup;
pub mod status;
pub mod store;
pub mod time;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::interop::MAX_INPUT_BYTES;

pub use item::ItemJson;
pub use time::{TimeError, parse_time};

/// How a command prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Lines for a person.
    Text,
    /// One JSON object (per result line, for commands that print a stream).
    Json,
}

impl Output {
    /// `Json` when `json` is set.
    pub fn json(json: bool) -> Self {
        if json { Output::Json } else { Output::Text }
    }

    /// Whether this is `Json`.
    pub fn is_json(self) -> bool {
        self == Output::Json
    }
}

/// Writes `value` as one line of JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

/// `1 item`, `2 items`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub use crate::util::hex;

/// Reads an input file (or standard input for `-`), at most `MAX_INPUT_BYTES`, as UTF-8.
pub(crate) fn read_input(input: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    let limit = MAX_INPUT_BYTES as u64 + 1;
    if input == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?
            .take(limit)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", input.display()))?;
    }
    if bytes.len() > MAX_INPUT_BYTES {
        bail!("{} is larger than {MAX_INPUT_BYTES} bytes", input.display());
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", input.display()))
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A counter for work of unknown length, on stderr when it is a terminal.
pub(crate) fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{pos}} ({{per_sec}})"))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Whether log lines and other output on stderr may carry colour: only on a terminal,
/// and not when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn stderr_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(0, "item"), "0 items");
        assert_eq!(count(1, "item"), "1 item");
        assert_eq!(count(2, "bundle"), "2 bundles");
    }
}
