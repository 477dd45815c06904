//! The `entente` command: parse arguments, set up logging, then hand each subcommand to
//! `entente::cli` (or, for `serve`, load the configuration, start the node and handle
//! signals). Nothing else lives here.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use entente::certs::Usage;
use entente::cli::query::{ItemOutput, Selection};
use entente::cli::{Output, parse_time};
use entente::config::ClientSettings;
use entente::engine::now_ms;
use entente::interop::InputFormat;
use entente::model::{IndicatorType, Tlp};
use entente::rpc::proto::ItemFilter;
use entente::{Config, Node, NodeId};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `serve` lets in-flight calls finish after SIGINT/SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "entente",
    version,
    about = "Share signed cyber-threat indicators across a federation"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Print results as JSON (one object, or one per line for item streams and ledger
    /// records; see "JSON output" in the README).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
    /// Revoke an indicator this node published: the revocation keeps the indicator's
    /// marking, type and tags, and goes to whoever may have received the indicator.
    Revoke {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
        /// Why it is revoked (sent with the revocation, e.g. "false positive").
        #[arg(long)]
        reason: String,
        /// The indicator's id (`indicator--<uuid>`).
        id: String,
    },
    /// Query the node for items this client may see (a table; JSON lines with --json).
    Query {
        /// Client (or node) configuration naming the node and this client's certificate.
        #[arg(long)]
        config: PathBuf,
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
        #[command(flatten)]
        filter: FilterArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Check, explain and reload the sharing policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show and verify the disclosure ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Repair the node's store (with the node stopped).
    Store {
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
        #[command(subcommand)]
        command: TaxiiCommand,
    },
    /// Say hello to a node over mTLS and print who answered (and, to its operator, the
    /// node's links, feeds and limits).
    Status {
        /// The node configuration file (its certificate is used to connect).
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

#[derive(Subcommand)]
enum TaxiiCommand {
    /// Read a password from standard input (its first line) and print its Argon2id
    /// hash, for `password_hash` in a `[[taxii.basic]]` entry.
    HashPassword,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Stix,
    Csv,
    List,
}

#[derive(clap::Args)]
struct FilterArgs {
    /// An exact value (normalised per type).
    #[arg(long)]
    value: Option<String>,
    /// An indicator type.
    #[arg(long = "type")]
    indicator_type: Option<IndicatorType>,
    /// A tag.
    #[arg(long)]
    tag: Option<String>,
    /// An origin node id.
    #[arg(long)]
    origin: Option<NodeId>,
    /// Modified since TIME: a span back from now (30m, 24h, 7d), an RFC 3339 date or
    /// time (2026-01-31, 2026-01-31T12:00:00Z), today, yesterday, or Unix milliseconds.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only items with this marking: clear, green, amber, amber+strict or red
    /// (repeatable; checked by this client after the node's filter).
    #[arg(long, value_name = "MARKING")]
    tlp: Vec<Tlp>,
    /// Include indicators past their valid_until.
    #[arg(long)]
    include_expired: bool,
}

impl FilterArgs {
    /// The filter the node applies, and what this client selects from its answer.
    fn into_filter(self) -> Result<(ItemFilter, Selection)> {
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

#[derive(Subcommand)]
enum PolicyCommand {
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

#[derive(Subcommand)]
enum LedgerCommand {
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

#[derive(Subcommand)]
enum StoreCommand {
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
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a federation CA (ca.crt, ca.key) in DIR.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Entente federation CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate (server and client use) signed by the CA in DIR.
    Node {
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
        #[arg(long, default_value_t = 397)]
        days: u32,
    },
    /// Issue a client certificate (analyst, researcher, tool) signed by the CA in DIR.
    Client {
        #[arg(long)]
        dir: PathBuf,
        /// The client id.
        #[arg(long)]
        id: NodeId,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Also write DIR/ID.toml, a client configuration for the node at this host:port.
        #[arg(long, requires = "node_id")]
        node: Option<String>,
        /// The id of that node.
        #[arg(long, requires = "node")]
        node_id: Option<NodeId>,
    },
    /// Revoke DIR/ID.crt: add it to the register and rewrite DIR/crl.pem.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: NodeId,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default) for every command: a node that closes the
    // TLS connection must surface as an error message, not kill the client silently.
    // A reader that goes away from stdout (`entente query | head`) ends the command
    // quietly instead, as Unix tools do: see `stdout_closed` and the panic hook.
    // The demo instead unwinds (silently) and exits non-zero: its temporary directory
    // holds a CA key and is removed on the way out.
    let default_hook = std::panic::take_hook();
    let demo = matches!(cli.command, Command::Demo { .. });
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            if demo {
                return;
            }
            std::process::exit(0);
        }
        default_hook(info);
    }));
    // The demo's output is its report; node logs only on request (RUST_LOG).
    let default_filter = if demo { "error" } else { "info" };
    init_tracing(cli.log_format, default_filter);
    match run(cli.command, Output::json(cli.json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "error: {}",
                entente::transport::connect::error_chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Whether a command failed only because its reader closed stdout (a write of results
/// returned EPIPE). Network errors arrive wrapped in client errors, never as a bare
/// `io::Error`, so they are not mistaken for this.
fn stdout_closed(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Logs go to stderr, coloured only when it is a terminal and `NO_COLOR` is unset.
fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(entente::cli::stderr_colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How `query`, `get` and `subscribe` print items.
fn item_output(output: Output, stix: bool) -> ItemOutput {
    match (output, stix) {
        (_, true) => ItemOutput::Stix,
        (Output::Json, false) => ItemOutput::Json,
        (Output::Text, false) => ItemOutput::Text,
    }
}

fn run(command: Command, output: Output) -> Result<()> {
    use entente::cli;
    match command {
        Command::Init {
            dir,
            id,
            listen,
            with_certs,
        } => cli::setup::init(&dir, &id, &listen, with_certs, output),
        Command::Certs { command } => certs(command, output),
        Command::Taxii {
            command: TaxiiCommand::HashPassword,
        } => cli::setup::taxii_hash_password(output),
        Command::Serve { config } => {
            no_json(
                output,
                "serve",
                "it prints only its address; logs take --log-format json",
            )?;
            let config = Config::load(&config)?;
            runtime()?.block_on(serve(config))
        }
        Command::Revoke { config, reason, id } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(cli::publish::revoke(&settings, &id, &reason, output))
        }
        Command::Publish {
            config,
            tlp,
            indicator_type,
            tag,
            max_hops,
            to,
            group,
            skip_invalid,
            format,
            bundle_size,
            input,
        } => {
            let settings = ClientSettings::load(&config)?;
            let options = cli::publish::PublishOptions {
                tlp,
                indicator_type,
                tags: tag,
                max_hops,
                recipients: to,
                groups: group,
                skip_invalid,
                format: format.map(|f| match f {
                    FormatArg::Stix => InputFormat::Stix,
                    FormatArg::Csv => InputFormat::Csv,
                    FormatArg::List => InputFormat::List,
                }),
                bundle_size,
            };
            runtime()?.block_on(cli::publish::publish(&settings, &input, options, output))
        }
        Command::Query {
            config,
            filter,
            stix,
            limit,
        } => {
            let (filter, selection) = filter.into_filter()?;
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(cli::query::query(
                &settings,
                filter,
                &selection,
                item_output(output, stix),
                limit,
            ))
        }
        Command::Get { config, stix, id } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(cli::query::get(&settings, &id, item_output(output, stix)))
        }
        Command::Subscribe {
            config,
            filter,
            stix,
        } => {
            let (filter, selection) = filter.into_filter()?;
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(cli::query::subscribe(
                &settings,
                filter,
                &selection,
                item_output(output, stix),
            ))
        }
        // Its output is a STIX bundle, JSON already: --json changes nothing.
        Command::Export {
            config,
            filter,
            output: file,
        } => {
            let (filter, selection) = filter.into_filter()?;
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(cli::query::export(
                &settings,
                filter,
                &selection,
                file.as_deref(),
            ))
        }
        Command::Policy { command } => policy(command, output),
        Command::Ledger { command } => ledger(command, output),
        Command::Store {
            command:
                StoreCommand::Recover {
                    config,
                    cut_damaged,
                },
        } => cli::store::recover(&Config::load(&config)?, cut_damaged, output),
        Command::Demo { keep_running } => {
            no_json(output, "demo", "its output is a narrated report")?;
            runtime()?.block_on(entente::demo::run(entente::demo::DemoOptions {
                keep_running,
            }))
        }
        Command::Status {
            config,
            node,
            wait,
            timeout,
        } => {
            let config = Config::load(&config)?;
            let options = cli::status::StatusOptions {
                target: node,
                wait: wait.then(|| timeout.map(Duration::from_secs)),
            };
            runtime()?.block_on(cli::status::status(config, options, output))
        }
        Command::Completions { shell } => {
            no_json(output, "completions", "it prints a shell script")?;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "entente", &mut script);
            std::io::stdout().lock().write_all(&script)?;
            Ok(())
        }
        Command::Man { dir } => {
            no_json(output, "man", "it prints a manual page")?;
            man(dir)
        }
    }
}

/// Refuses `--json` for a command that has nothing to print as JSON.
fn no_json(output: Output, command: &str, why: &str) -> Result<()> {
    if output.is_json() {
        bail!("--json is not available for `entente {command}`: {why}");
    }
    Ok(())
}

/// `entente man`: the page for `entente` on stdout, or with `--dir` one page per command
/// (`entente.1`, `entente-query.1`, `entente-certs-node.1`, ...).
fn man(dir: Option<PathBuf>) -> Result<()> {
    let command = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            if std::io::stdout().is_terminal() {
                println!("wrote the manual pages into {}", dir.display());
            }
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            std::io::stdout().lock().write_all(&page)?;
            Ok(())
        }
    }
}

fn policy(command: PolicyCommand, output: Output) -> Result<()> {
    use entente::cli::policy;
    match command {
        PolicyCommand::Check { config } => policy::check(&Config::load(&config)?, output),
        PolicyCommand::Explain {
            config,
            partner,
            item,
            input,
            tlp,
            max_hops,
            to,
        } => match (item, input) {
            (Some(item), _) => {
                let settings = ClientSettings::load(&config)?;
                runtime()?.block_on(policy::explain_item(&settings, &partner, &item, output))
            }
            (None, Some(input)) => {
                let config = Config::load(&config)?;
                let compiled = entente::policy::Policy::compile(&config.policy_spec());
                let distribution = entente::model::Distribution {
                    max_hops,
                    recipients: to,
                };
                policy::explain_input(&compiled, &partner, &input, tlp, &distribution, output)
            }
            (None, None) => bail!("give --item ID or --input FILE"),
        },
        PolicyCommand::Reload { config } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(policy::reload(&settings, output))
        }
    }
}

fn ledger(command: LedgerCommand, output: Output) -> Result<()> {
    use entente::cli::ledger;
    match command {
        LedgerCommand::Show {
            config,
            partner,
            since,
        } => {
            let since = since
                .map(|s| parse_time("--since", &s, now_ms()))
                .transpose()?;
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(ledger::show(&settings, partner, since, output))
        }
        LedgerCommand::Verify { config } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(ledger::verify(&settings, output))
        }
    }
}

fn certs(command: CertsCommand, output: Output) -> Result<()> {
    use entente::cli::setup;
    match command {
        CertsCommand::Ca { dir, name, days } => setup::create_ca(&dir, &name, days, output),
        CertsCommand::Node {
            dir,
            id,
            ip,
            dns,
            days,
        } => setup::issue(&dir, &id, Usage::Node { ips: ip, dns }, days, None, output),
        CertsCommand::Client {
            dir,
            id,
            days,
            node,
            node_id,
        } => setup::issue(&dir, &id, Usage::Client, days, node.zip(node_id), output),
        CertsCommand::Revoke { dir, id } => setup::revoke(&dir, &id, output),
    }
}

async fn serve(config: Config) -> Result<()> {
    // Handlers first: a SIGHUP (systemctl reload) or SIGTERM that arrives as soon as the
    // node reports it is serving must reload or stop it, not kill it by default action.
    let signals = Signals::new()?;
    let node = Node::start(config).await?;
    println!("{} serving on {}", node.id(), node.local_addr());
    if let Some(taxii) = node.taxii_addr() {
        println!("{} TAXII 2.1 on https://{taxii}/taxii2/", node.id());
    }
    signals.wait(&node).await;
    tracing::info!(deadline = ?SHUTDOWN_DEADLINE, "shutting down");
    node.shutdown(SHUTDOWN_DEADLINE).await?;
    Ok(())
}

/// The signals `serve` handles, listened for from start-up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGINT or SIGTERM; SIGHUP reloads the policy and keeps serving.
    async fn wait(mut self, node: &Node) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM received"); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT received"); return; }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the policy");
                    if let Err(problem) = node.reload_policy() {
                        tracing::error!(%problem, "reload refused; the previous policy stays in force");
                    }
                }
            }
        }
    }
}
