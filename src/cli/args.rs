//! The command line: every subcommand, option and its help, as clap derives them. The
//! same definition gives `--help`, the shell completions and the manual pages
//! (`entente completions`, `entente man`); `src/main.rs` parses it and dispatches to the
//! other files of this module.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use super::parse_time;
use super::query::Selection;
use crate::engine::now_ms;
use crate::model::{IndicatorType, NodeId, Tlp};
use crate::rpc::proto::ItemFilter;

/// The whole command line.
#[derive(Parser)]
#[command(
    name = "entente",
    version,
    about = "Share signed cyber-threat indicators across a federation",
    long_about = None
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Print results as JSON (one object, or one per line for item streams and ledger
    /// records; see "JSON output" in the README).
    #[arg(long, global = true)]
    pub json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written: text for a person, or one JSON object per line.
// A doc comment on a value would switch every `--help` to the long form.
#[allow(missing_docs)]
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The subcommands of `entente`.
#[derive(Subcommand)]
pub enum Command {
    /// Write a starter node configuration (and, with --with-certs, a PKI).
    Init {
        /// Directory to write entente.toml (and certs/) into.
        #[arg(long)]
        dir: PathBuf,
        /// The node id, e.g. redmond.hq.
        #[arg(long)]
        id: NodeId,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: String,
        /// Also create a federation CA (unless DIR/certs/ca.crt exists) and a node certificate.
        #[arg(long)]
        with_certs: bool,
    },
    /// Manage the federation's certificates.
    Certs {
        /// The `certs` subcommand.
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a node until SIGINT or SIGTERM.
    Serve {
        /// The node configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish indicators from a STIX 2.1 bundle, a CSV file or a plain list.
    Publish {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// TLP marking for items whose input gives none (CLEAR, GREEN, AMBER, AMBER+STRICT, RED).
        #[arg(long)]
        tlp: Option<Tlp>,
        /// Indicator type for CSV rows and list lines that give none (detected otherwise).
        #[arg(long = "type")]
        indicator_type: Option<IndicatorType>,
        /// Tag added to every item (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Signed distribution: greatest number of node-to-node transfers (0 = this node only).
        #[arg(long)]
        max_hops: Option<u32>,
        /// Signed distribution: only these nodes may ever hold the items (repeatable).
        #[arg(long = "to")]
        to: Vec<NodeId>,
        /// Signed distribution: the members of this sharing group of the node's [groups]
        /// (repeatable; combined with --to).
        #[arg(long = "group")]
        group: Vec<String>,
        /// Publish the valid items even if some entries are invalid.
        #[arg(long)]
        skip_invalid: bool,
        /// Input format (detected when absent).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Items per signed bundle.
        #[arg(long, default_value_t = 1000)]
        bundle_size: usize,
        /// The input file, or - for standard input.
        input: PathBuf,
    },
    /// Revoke an indicator or context object this node published: the revocation keeps
    /// its marking, type and tags, and goes to whoever may have received it (a context
    /// object is revoked by a new version of it with `revoked: true`).
    Revoke {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// Why it is revoked (sent with the revocation, e.g. "false positive").
        #[arg(long)]
        reason: String,
        /// The id (`indicator--<uuid>`, `malware--<uuid>`, …).
        id: String,
    },
    /// Query the node for items this client may see (a table; JSON lines with --json).
    Query {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// What to select.
        #[command(flatten)]
        filter: FilterArgs,
        /// Print STIX 2.1 objects with `x_entente_provenance`, one per line.
        #[arg(long, conflicts_with = "json")]
        stix: bool,
        /// Stop after this many items [default: all].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one item with its provenance.
    Get {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// Print the STIX 2.1 object with `x_entente_provenance`.
        #[arg(long, conflicts_with = "json")]
        stix: bool,
        /// The item id, indicator--<uuid>.
        id: String,
    },
    /// Print items as the node accepts them, until interrupted.
    Subscribe {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// What to select.
        #[command(flatten)]
        filter: FilterArgs,
        /// Print STIX 2.1 objects with `x_entente_provenance`, one per line.
        #[arg(long, conflicts_with = "json")]
        stix: bool,
    },
    /// Export, as a STIX 2.1 bundle, every item this client may see.
    Export {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// What to select.
        #[command(flatten)]
        filter: FilterArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Check, explain and reload the sharing policy.
    Policy {
        /// The `policy` subcommand.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show and verify the disclosure ledger.
    Ledger {
        /// The `ledger` subcommand.
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Repair the node's store (with the node stopped).
    Store {
        /// The `store` subcommand.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run a whole federation on loopback: publish a sample campaign, show who holds
    /// what and why, verify every signature, reject a rogue peer's forgeries.
    Demo {
        /// Leave the federation running until Ctrl-C, and print how to query it.
        #[arg(long)]
        keep_running: bool,
    },
    /// TAXII 2.1 listener tools.
    Taxii {
        /// The `taxii` subcommand.
        #[command(subcommand)]
        command: TaxiiCommand,
    },
    /// Say hello to a node over mTLS and print who answered (and, to its operator, the
    /// node's links, feeds and limits).
    Status {
        /// The node configuration file (its certificate is used to connect), or a
        /// client configuration ([client]; an admin client gets the operator's view).
        #[arg(long)]
        config: PathBuf,
        /// Node to ask: a configured peer id, or ID@HOST:PORT. Default: this node.
        #[arg(long)]
        node: Option<String>,
        /// Then follow the node's replication links until each has caught up with its
        /// peer (progress bars on a terminal), and print what each received.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) after this many seconds.
        #[arg(long, requires = "wait")]
        timeout: Option<u64>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    Man {
        /// Write entente.1 and entente-COMMAND.1 for every subcommand here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The subcommands of `entente taxii`.
#[derive(Subcommand)]
pub enum TaxiiCommand {
    /// Read a password from standard input (its first line) and print its Argon2id
    /// hash, for `password_hash` in a `[[taxii.basic]]` entry.
    HashPassword,
}

/// Input formats of `entente publish`: a STIX 2.1 bundle, CSV, or one value per line.
// A doc comment on a value would switch every `--help` to the long form.
#[allow(missing_docs)]
#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Stix,
    Csv,
    List,
}

/// The filters `query`, `subscribe` and `export` share.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// An exact value (normalised per type).
    #[arg(long)]
    pub value: Option<String>,
    /// An indicator type.
    #[arg(long = "type")]
    pub indicator_type: Option<IndicatorType>,
    /// A tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// An origin node id.
    #[arg(long)]
    pub origin: Option<NodeId>,
    /// Modified since TIME: a span back from now (30m, 24h, 7d), an RFC 3339 date or
    /// time (2026-01-31, 2026-01-31T12:00:00Z), today, yesterday, or Unix milliseconds.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only items with this marking: clear, green, amber, amber+strict or red
    /// (repeatable; checked by this client after the node's filter).
    #[arg(long, value_name = "MARKING")]
    pub tlp: Vec<Tlp>,
    /// Include indicators past their valid_until.
    #[arg(long)]
    pub include_expired: bool,
}

impl FilterArgs {
    /// The filter the node applies, and what this client selects from its answer.
    pub fn into_filter(self) -> Result<(ItemFilter, Selection)> {
        let filter = ItemFilter {
            value: self.value.unwrap_or_default(),
            indicator_type: self
                .indicator_type
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            tag: self.tag.unwrap_or_default(),
            origin: self.origin.map(|o| o.to_string()).unwrap_or_default(),
            modified_since_unix_ms: match self.since {
                Some(s) => parse_time("--since", &s, now_ms())?,
                None => 0,
            },
            include_expired: self.include_expired,
        };
        Ok((filter, Selection { tlp: self.tlp }))
    }
}

/// The subcommands of `entente policy`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate the configuration and print the compiled policy.
    Check {
        /// The node configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// For each item, allow or withhold for a partner, and the rule that decided.
    Explain {
        /// The node configuration.
        #[arg(long)]
        config: PathBuf,
        /// The partner (a [[peer]] or [[client]] id).
        #[arg(long)]
        partner: NodeId,
        /// A stored item, asked of the running node.
        #[arg(long, conflicts_with = "input", required_unless_present = "input")]
        item: Option<String>,
        /// Items in a file (STIX, CSV or list), judged as if published here now.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Marking for input items that give none.
        #[arg(long)]
        tlp: Option<Tlp>,
        /// Signed distribution for input items: max_hops.
        #[arg(long)]
        max_hops: Option<u32>,
        /// Signed distribution for input items: recipients (repeatable).
        #[arg(long = "to")]
        to: Vec<NodeId>,
    },
    /// Ask the running node to re-read its configuration and apply the new policy (like SIGHUP).
    Reload {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The subcommands of `entente ledger`.
#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Print ledger records, oldest first.
    Show {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// Only deliveries to this partner.
        #[arg(long)]
        partner: Option<NodeId>,
        /// Only records since TIME: a span back from now (30m, 24h, 7d), an RFC 3339
        /// date or time, today, yesterday, or Unix milliseconds.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Check the hash chain; exits non-zero and says where if it is broken.
    Verify {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The subcommands of `entente store`.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Rebuild a store whose metadata (sled) was lost or cannot be read from its
    /// bundle log; the disclosure ledger starts again, saying why.
    Recover {
        /// The node configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Also when a frame in the middle of the log is damaged: keep only what
        /// precedes it (the rest is copied aside).
        #[arg(long)]
        cut_damaged: bool,
    },
    /// Compact the bundle log now, with the node stopped (a running node compacts
    /// itself every `store.compact_every`): superseded versions and indicators expired
    /// for longer than `store.keep_expired` are dropped. Prints the space reclaimed.
    Compact {
        /// The node configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The subcommands of `entente certs`.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a federation CA (ca.crt, ca.key) in DIR.
    Ca {
        /// The directory of the CA (ca.crt, ca.key), written into.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name. Default: "Entente federation CA" and a random suffix, so
        /// that two federations' CAs never share a name (CRLs are matched by name).
        #[arg(long)]
        name: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Issue a node certificate (server and client use) signed by the CA in DIR.
    Node {
        /// The directory of the CA; the certificate and key are written into it.
        #[arg(long)]
        dir: PathBuf,
        /// The node id, put first among the DNS names.
        #[arg(long)]
        id: NodeId,
        /// An IP address the node is reached at (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// A further DNS name the node is reached at (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Issue a client certificate (analyst, researcher, tool) signed by the CA in DIR.
    Client {
        /// The directory of the CA; the certificate and key are written into it.
        #[arg(long)]
        dir: PathBuf,
        /// The client id.
        #[arg(long)]
        id: NodeId,
        /// Validity in days.
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Also write DIR/ID.toml, a client configuration for the node at this host:port.
        #[arg(long, requires = "node_id")]
        node: Option<String>,
        /// The id of that node.
        #[arg(long, requires = "node")]
        node_id: Option<NodeId>,
    },
    /// On a member's machine: make a key (ID.key, mode 0600) and a certificate signing
    /// request (ID.csr) to send to the CA. The key never leaves this machine.
    Request {
        /// The id to request a certificate for.
        #[arg(long)]
        id: NodeId,
        /// The directory the key and request are written into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Make the request for this existing key instead of a new one (renewal with the
        /// same key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// At the CA: issue a certificate from a request made with `certs request`, without
    /// ever seeing the key. Writes CA_DIR/ID.crt (a previous one is kept as ID.SERIAL.crt).
    #[command(group(clap::ArgGroup::new("usage").required(true).args(["client", "node"])))]
    Sign {
        /// The certificate signing request (PEM).
        csr: PathBuf,
        /// The directory of the CA (ca.crt, ca.key, revoked.toml).
        #[arg(long)]
        ca_dir: PathBuf,
        /// A client certificate (client authentication only).
        #[arg(long)]
        client: bool,
        /// A node certificate (server and client authentication).
        #[arg(long)]
        node: bool,
        /// For a node: an IP address it is reached at (repeatable); the request may ask
        /// for no address not given here.
        #[arg(long, requires = "node")]
        ip: Vec<IpAddr>,
        /// For a node: a further DNS name it is reached at (repeatable); the request may
        /// ask for no name not given here.
        #[arg(long, requires = "node")]
        dns: Vec<String>,
        /// Refuse the request unless it is for this id.
        #[arg(long)]
        id: Option<NodeId>,
        /// Validity in days.
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// At the CA: renew CA_DIR/ID.crt (same id, names, usage and key, new serial); the
    /// previous certificate stays valid until it expires.
    Renew {
        /// The directory of the CA and the certificates it issued.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The id whose certificate (CA_DIR/ID.crt) is renewed.
        #[arg(long)]
        id: NodeId,
        /// Make a new key too (only where the CA holds CA_DIR/ID.key, i.e. certificates
        /// made with `certs node` or `certs client`).
        #[arg(long)]
        new_key: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Hand a CRL to one running node (as its operator or an admin client): the node
    /// puts it in force if a trust anchor of its signed it and it is newer than the one in
    /// force, and offers it to its peers, which do the same.
    PushCrl {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// The CRL (PEM), as `certs revoke` writes it.
        crl: PathBuf,
    },
    /// Revoke every certificate the CA in DIR issued to an id (DIR/ID.crt and each
    /// earlier DIR/ID.SERIAL.crt, which stay valid until they expire unless revoked), or
    /// with --serial one of them: add them to the register and rewrite DIR/crl.pem.
    Revoke {
        /// The directory of the CA and its revocation register.
        #[arg(long)]
        dir: PathBuf,
        /// The id whose certificates are revoked.
        #[arg(long)]
        id: NodeId,
        /// Revoke only the certificate of ID with this serial (hex, as in the name
        /// ID.SERIAL.crt), for example the one of a key replaced by `certs renew
        /// --new-key`.
        #[arg(long)]
        serial: Option<String>,
        /// Also hand the new CRL to the node this configuration names (as `certs
        /// push-crl` does), which puts it in force and passes it on to its peers: the
        /// revocation and its distribution in one command.
        #[arg(long, value_name = "CONFIG")]
        push_to: Option<PathBuf>,
    },
}
