//! A node configuration file written from typed parts, for programs that make
//! configurations rather than read them: the demo, the benchmark and the tests. Every
//! string is quoted and escaped as TOML requires, so a path or id with a quote in it
//! cannot change the file's meaning, and what is written is checked by the same loader
//! as an operator's file.
//!
//! ```
//! use entente::config::builder::{Entry, NodeToml, Policy};
//! let text = NodeToml::new("redmond.hq", "127.0.0.1:0", "data", "hq.crt", "hq.key", "ca.crt")
//!     .cache_mb(16)
//!     .entry(Entry::client("researcher.uni-x", "read_only").policy(Policy::all_types()))
//!     .render();
//! assert!(text.contains("[[client]]"));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A TOML basic string holding `text`.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote_path(path: &Path) -> String {
    quote(&path.display().to_string())
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// The sharing policy of one `[[peer]]` or `[[client]]` entry.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    max_tlp: Option<String>,
    allow_types: Option<Vec<String>>,
    forward_third_party: Option<bool>,
    /// Further keys, written as given (TOML lines).
    more: Vec<String>,
}

impl Policy {
    /// Every indicator type, at the default marking.
    pub fn all_types() -> Self {
        Self::default().allow_types(["*"])
    }

    /// `max_tlp`.
    pub fn max_tlp(mut self, tlp: &str) -> Self {
        self.max_tlp = Some(tlp.to_owned());
        self
    }

    /// `allow_types`.
    pub fn allow_types<'a>(mut self, types: impl IntoIterator<Item = &'a str>) -> Self {
        self.allow_types = Some(types.into_iter().map(str::to_owned).collect());
        self
    }

    /// `forward_third_party`.
    pub fn forward_third_party(mut self, forward: bool) -> Self {
        self.forward_third_party = Some(forward);
        self
    }

    /// Another key of the entry, as a TOML line (`deny_tags = ["pii"]`).
    pub fn line(mut self, line: &str) -> Self {
        self.more.push(line.to_owned());
        self
    }

    fn render(&self, out: &mut String) {
        if let Some(tlp) = &self.max_tlp {
            let _ = writeln!(out, "max_tlp = {}", quote(tlp));
        }
        if let Some(types) = &self.allow_types {
            let _ = writeln!(
                out,
                "allow_types = {}",
                list(types.iter().map(|t| quote(t)))
            );
        }
        if let Some(forward) = self.forward_third_party {
            let _ = writeln!(out, "forward_third_party = {forward}");
        }
        for line in &self.more {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// One `[[peer]]` or `[[client]]` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    table: &'static str,
    id: String,
    address: Option<String>,
    role: String,
    policy: Policy,
}

impl Entry {
    /// A `[[peer]]` at `address` (role `peer`).
    pub fn peer(id: &str, address: &str) -> Self {
        Self {
            table: "peer",
            id: id.to_owned(),
            address: Some(address.to_owned()),
            role: "peer".into(),
            policy: Policy::default(),
        }
    }

    /// A `[[client]]` with `role` (`read_only`, `analyst` or `admin`).
    pub fn client(id: &str, role: &str) -> Self {
        Self {
            table: "client",
            id: id.to_owned(),
            address: None,
            role: role.to_owned(),
            policy: Policy::default(),
        }
    }

    /// Its role (a peer's: `peer` or `read_only`).
    pub fn role(mut self, role: &str) -> Self {
        self.role = role.to_owned();
        self
    }

    /// Its sharing policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "\n[[{}]]\nid = {}", self.table, quote(&self.id));
        if let Some(address) = &self.address {
            let _ = writeln!(out, "address = {}", quote(address));
        }
        let _ = writeln!(out, "role = {}", quote(&self.role));
        self.policy.render(out);
    }
}

/// A node configuration file.
#[derive(Clone, Debug)]
pub struct NodeToml {
    comment: Option<String>,
    id: String,
    listen: String,
    data_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    trust_anchors: Vec<PathBuf>,
    crls: Vec<PathBuf>,
    cache_mb: Option<u64>,
    compact_every: Option<String>,
    limits: Vec<(String, String)>,
    entries: Vec<Entry>,
    sections: Vec<String>,
}

impl NodeToml {
    /// Node `id` listening on `listen`, its store in `data_dir`, its certificate and key,
    /// trusting `anchor`.
    pub fn new(
        id: &str,
        listen: &str,
        data_dir: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        anchor: impl AsRef<Path>,
    ) -> Self {
        Self {
            comment: None,
            id: id.to_owned(),
            listen: listen.to_owned(),
            data_dir: data_dir.as_ref().to_owned(),
            cert: cert.as_ref().to_owned(),
            key: key.as_ref().to_owned(),
            trust_anchors: vec![anchor.as_ref().to_owned()],
            crls: Vec::new(),
            cache_mb: None,
            compact_every: None,
            limits: Vec::new(),
            entries: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// A comment line at the top of the file.
    pub fn comment(mut self, text: &str) -> Self {
        self.comment = Some(text.to_owned());
        self
    }

    /// Another trust anchor.
    pub fn anchor(mut self, path: impl AsRef<Path>) -> Self {
        self.trust_anchors.push(path.as_ref().to_owned());
        self
    }

    /// A CRL file.
    pub fn crl(mut self, path: impl AsRef<Path>) -> Self {
        self.crls.push(path.as_ref().to_owned());
        self
    }

    /// `store.cache_mb`.
    pub fn cache_mb(mut self, mb: u64) -> Self {
        self.cache_mb = Some(mb);
        self
    }

    /// `store.compact_every` (`"1s"`, `"1d"`, `"0"`).
    pub fn compact_every(mut self, every: &str) -> Self {
        self.compact_every = Some(every.to_owned());
        self
    }

    /// A `[limits]` key with a string value (`slow_reader_timeout`, `"10s"`).
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.push((key.to_owned(), quote(value)));
        self
    }

    /// A `[limits]` key with a number.
    pub fn limit_number(mut self, key: &str, value: u64) -> Self {
        self.limits.push((key.to_owned(), value.to_string()));
        self
    }

    /// A `[[peer]]` or `[[client]]` entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// A further section, written as given after the rest (`[admin]`, `[taxii]`, ...).
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push(text.to_owned());
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(comment) = &self.comment {
            for line in comment.lines() {
                let _ = writeln!(out, "# {line}");
            }
        }
        let _ = writeln!(
            out,
            "[node]\nid = {}\nlisten = {}\ndata_dir = {}\ncert = {}\nkey = {}\ntrust_anchors = {}\ncrls = {}",
            quote(&self.id),
            quote(&self.listen),
            quote_path(&self.data_dir),
            quote_path(&self.cert),
            quote_path(&self.key),
            list(self.trust_anchors.iter().map(|p| quote_path(p))),
            list(self.crls.iter().map(|p| quote_path(p))),
        );
        if self.cache_mb.is_some() || self.compact_every.is_some() {
            out.push_str("\n[store]\n");
            if let Some(mb) = self.cache_mb {
                let _ = writeln!(out, "cache_mb = {mb}");
            }
            if let Some(every) = &self.compact_every {
                let _ = writeln!(out, "compact_every = {}", quote(every));
            }
        }
        if !self.limits.is_empty() {
            out.push_str("\n[limits]\n");
            for (key, value) in &self.limits {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        for entry in &self.entries {
            entry.render(&mut out);
        }
        for section in &self.sections {
            let _ = writeln!(out, "\n{}", section.trim_end());
        }
        out
    }

    /// Writes the file at `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_so_they_cannot_add_keys() {
        let text = NodeToml::new(
            "redmond.hq",
            "127.0.0.1:0",
            "data\"\nlisten = \"0.0.0.0:1",
            "a.crt",
            "a.key",
            "ca.crt",
        )
        .render();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let node = parsed["node"].as_table().unwrap();
        assert_eq!(node["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(
            node["data_dir"].as_str(),
            Some("data\"\nlisten = \"0.0.0.0:1")
        );
    }

    #[test]
    fn entries_sections_and_limits_are_written() {
        let text = NodeToml::new("redmond.hq", "127.0.0.1:0", "d", "c", "k", "ca")
            .cache_mb(16)
            .compact_every("1s")
            .limit("slow_reader_timeout", "10s")
            .entry(
                Entry::peer("berlin.office", "127.0.0.1:1")
                    .policy(Policy::all_types().max_tlp("RED").forward_third_party(true)),
            )
            .entry(Entry::client("analyst.alice", "analyst"))
            .section("[admin]\nlisten = \"127.0.0.1:0\"")
            .render();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["store"]["compact_every"].as_str(), Some("1s"));
        assert_eq!(
            parsed["limits"]["slow_reader_timeout"].as_str(),
            Some("10s")
        );
        let peer = &parsed["peer"].as_array().unwrap()[0];
        assert_eq!(peer["max_tlp"].as_str(), Some("RED"));
        assert_eq!(peer["forward_third_party"].as_bool(), Some(true));
        assert_eq!(
            parsed["client"].as_array().unwrap()[0]["role"].as_str(),
            Some("analyst")
        );
        assert_eq!(parsed["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
    }
}
