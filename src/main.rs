//! The `entente` command: parse arguments, set up logging, load and validate the
//! configuration, then hand over to the library. Signals are handled here.

use std::io::{BufRead, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use entente::certs::{CertDir, Usage, Validity};
use entente::client::NodeClient;
use entente::config::ClientSettings;
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
    /// Query the node for items this client may see.
    Query {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON lines (STIX 2.1 indicators with provenance).
        #[arg(long)]
        json: bool,
        /// Stop after this many items.
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
    },
    /// Show one item with its provenance.
    Get {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON (a STIX 2.1 indicator with provenance).
        #[arg(long)]
        json: bool,
        /// The item id, indicator--<uuid>.
        id: String,
    },
    /// Print items as the node accepts them, until interrupted.
    Subscribe {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Export, as a STIX 2.1 bundle, every item this client may see.
    Export {
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
    /// Say hello to a node over mTLS and print who answered.
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
    /// Modified since: RFC 3339 or a span such as 24h or 7d.
    #[arg(long)]
    since: Option<String>,
    /// Include indicators past their valid_until.
    #[arg(long)]
    include_expired: bool,
}

impl FilterArgs {
    fn into_filter(self) -> Result<ItemFilter> {
        Ok(ItemFilter {
            value: self.value.unwrap_or_default(),
            indicator_type: self
                .indicator_type
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            tag: self.tag.unwrap_or_default(),
            origin: self.origin.map(|o| o.to_string()).unwrap_or_default(),
            modified_since_unix_ms: match self.since {
                Some(s) => entente::cli::parse_since(&s)?,
                None => 0,
            },
            include_expired: self.include_expired,
        })
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate the configuration and print the compiled policy.
    Check {
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
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Print ledger records, oldest first.
    Show {
        #[arg(long)]
        config: PathBuf,
        /// Only deliveries to this partner.
        #[arg(long)]
        partner: Option<NodeId>,
        /// Only records since: RFC 3339 or a span such as 24h.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exits non-zero and says where if it is broken.
    Verify {
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
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "error"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_filter);
    match run(cli.command) {
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

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init {
            dir,
            id,
            listen,
            with_certs,
        } => init(&dir, &id, &listen, with_certs),
        Command::Certs { command } => certs(command),
        Command::Taxii {
            command: TaxiiCommand::HashPassword,
        } => taxii_hash_password(),
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(serve(config))
        }
        Command::Revoke { config, reason, id } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(entente::cli::revoke(&settings, &id, &reason))
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
            let options = entente::cli::PublishOptions {
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
            runtime()?.block_on(entente::cli::publish(&settings, &input, options))
        }
        Command::Query {
            config,
            filter,
            json,
            limit,
        } => {
            let settings = ClientSettings::load(&config)?;
            let filter = filter.into_filter()?;
            runtime()?.block_on(entente::cli::query(&settings, filter, json, limit))
        }
        Command::Get { config, json, id } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(entente::cli::get(&settings, &id, json))
        }
        Command::Subscribe {
            config,
            filter,
            json,
        } => {
            let settings = ClientSettings::load(&config)?;
            let filter = filter.into_filter()?;
            runtime()?.block_on(entente::cli::subscribe(&settings, filter, json))
        }
        Command::Export {
            config,
            filter,
            output,
        } => {
            let settings = ClientSettings::load(&config)?;
            let filter = filter.into_filter()?;
            runtime()?.block_on(entente::cli::export(&settings, filter, output.as_deref()))
        }
        Command::Policy { command } => policy(command),
        Command::Ledger { command } => ledger(command),
        Command::Store {
            command:
                StoreCommand::Recover {
                    config,
                    cut_damaged,
                },
        } => entente::cli::store_recover(&Config::load(&config)?, cut_damaged),
        Command::Demo { keep_running } => {
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
            runtime()?.block_on(status(
                config,
                node,
                wait.then(|| timeout.map(Duration::from_secs)),
            ))
        }
    }
}

fn policy(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check { config } => {
            let config = Config::load(&config)?;
            let policy = entente::policy::Policy::compile(&config.policy_spec());
            print!("{}", policy.describe());
            println!("\npolicy hash {}", hex(&policy.hash()));
            Ok(())
        }
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
                runtime()?.block_on(async {
                    let client = NodeClient::connect_with(&settings).await?;
                    let answer = client.explain(partner.as_str(), &item).await?;
                    println!("{item}: {}", answer.rule);
                    anyhow::Ok(())
                })
            }
            (None, Some(input)) => {
                let config = Config::load(&config)?;
                let policy = entente::policy::Policy::compile(&config.policy_spec());
                let distribution = entente::model::Distribution {
                    max_hops,
                    recipients: to,
                };
                entente::cli::explain_input(&policy, &partner, &input, tlp, &distribution)
            }
            (None, None) => bail!("give --item ID or --input FILE"),
        },
        PolicyCommand::Reload { config } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(async {
                let client = NodeClient::connect_with(&settings).await?;
                let answer = client.reload_policy().await?;
                println!(
                    "{} reloaded its policy (hash {})",
                    client.node(),
                    answer.policy_hash
                );
                anyhow::Ok(())
            })
        }
    }
}

fn ledger(command: LedgerCommand) -> Result<()> {
    match command {
        LedgerCommand::Show {
            config,
            partner,
            since,
            json,
        } => {
            let settings = ClientSettings::load(&config)?;
            let since = since.map(|s| entente::cli::parse_since(&s)).transpose()?;
            runtime()?.block_on(entente::cli::ledger_show(&settings, partner, since, json))
        }
        LedgerCommand::Verify { config } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(entente::cli::ledger_verify(&settings))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn init(dir: &Path, id: &NodeId, listen: &str, with_certs: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("entente.toml");
    if config_path.exists() {
        bail!("{} exists; refusing to overwrite it", config_path.display());
    }
    if with_certs {
        let certs = CertDir::new(dir.join("certs"));
        if !certs.ca_cert_path().exists() {
            certs.create_ca("Entente federation CA", Validity::days_from_now(3650))?;
            println!("created federation CA {}", certs.ca_cert_path().display());
        }
        certs.issue(
            id,
            &Usage::Node {
                ips: vec![],
                dns: vec![],
            },
            Validity::days_from_now(397),
        )?;
        println!(
            "issued node certificate {}",
            certs.cert_path(id.as_str()).display()
        );
    }
    entente::transport::files::write_public_new(
        &config_path,
        entente::config::starter_config(id, listen, "certs").as_bytes(),
    )
    .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("wrote {}", config_path.display());
    Ok(())
}

fn certs(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Ca { dir, name, days } => {
            let certs = CertDir::new(&dir);
            certs.create_ca(&name, Validity::days_from_now(days))?;
            println!(
                "created federation CA {} (key ca.key, mode 0600)",
                certs.ca_cert_path().display()
            );
        }
        CertsCommand::Node {
            dir,
            id,
            ip,
            dns,
            days,
        } => {
            let certs = CertDir::new(&dir);
            certs.issue(
                &id,
                &Usage::Node { ips: ip, dns },
                Validity::days_from_now(days),
            )?;
            println!(
                "issued node certificate {}",
                certs.cert_path(id.as_str()).display()
            );
        }
        CertsCommand::Client {
            dir,
            id,
            days,
            node,
            node_id,
        } => {
            let certs = CertDir::new(&dir);
            certs.issue(&id, &Usage::Client, Validity::days_from_now(days))?;
            println!(
                "issued client certificate {}",
                certs.cert_path(id.as_str()).display()
            );
            if let (Some(node), Some(node_id)) = (node, node_id) {
                let path = dir.join(format!("{id}.toml"));
                entente::transport::files::write_public_new(
                    &path,
                    entente::config::starter_client_config(&id, &node, &node_id).as_bytes(),
                )
                .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote client configuration {}", path.display());
            }
        }
        CertsCommand::Revoke { dir, id } => {
            let crl = CertDir::new(&dir).revoke(&id)?;
            println!(
                "revoked {id}; distribute {} to every node (node.crls) and reload them (systemctl reload entente or entente policy reload)",
                crl.display()
            );
        }
    }
    Ok(())
}

/// `entente taxii hash-password`: the password comes from standard input, never from
/// the command line (where other users could read it).
fn taxii_hash_password() -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(1024)
        .read_line(&mut line)
        .context("read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = entente::taxii::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
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
    if let Some(admin) = node.admin_addr() {
        println!("{} admin console on http://{admin}/", node.id());
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

/// `wait`: `Some(deadline)` to follow the links until caught up (see `cli::wait_for_sync`).
async fn status(
    config: Config,
    target: Option<String>,
    wait: Option<Option<Duration>>,
) -> Result<()> {
    let (id, address) = match target {
        None => {
            let mut addr = config.node.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                });
            }
            (config.node.id.clone(), addr.to_string())
        }
        Some(target) => match target.split_once('@') {
            Some((id, address)) => (
                id.parse::<NodeId>().context("--node ID@HOST:PORT")?,
                address.to_owned(),
            ),
            None => {
                let id: NodeId = target
                    .parse()
                    .context("--node must be a peer id or ID@HOST:PORT")?;
                let peer =
                    config.peers.iter().find(|p| p.id == id).with_context(|| {
                        format!("{id} is not a configured peer; use ID@HOST:PORT")
                    })?;
                (id, peer.address.clone())
            }
        },
    };
    let tls = config.tls.client_config()?;
    let client = NodeClient::connect(tls, &config.node.id, &address, &id).await?;
    let hello = client.hello().await?;
    println!("node:             {}", hello.node_id);
    println!("address:          {address}");
    println!("protocol version: {}", hello.protocol_version);
    println!("software version: {}", hello.software_version);
    println!("capabilities:     {}", hello.capabilities.join(", "));
    println!(
        "you are:          {} ({})",
        hello.caller_id, hello.caller_role
    );
    // The operator also sees the node's replication links.
    if hello.caller_role == "admin" {
        let links = client.links().await?;
        if links.links.is_empty() {
            println!("links:            none (no [[peer]] with role peer)");
        }
        for link in links.links {
            println!(
                "link {:<24} {} cursor {} of {} (lag {} entries, {:.1} s), items {} received / {} rejected, bundles {} / {}{}{}",
                link.peer,
                if link.connected {
                    "connected   "
                } else {
                    "disconnected"
                },
                link.cursor,
                link.head,
                link.head.saturating_sub(link.cursor),
                link.lag_ms as f64 / 1000.0,
                link.items_received,
                link.items_rejected,
                link.bundles_received,
                link.bundles_rejected,
                if link.last_message_unix_ms > 0 {
                    format!(
                        ", last message {:.0} s ago",
                        (entente::engine::now_ms() - link.last_message_unix_ms) as f64 / 1000.0
                    )
                } else {
                    String::new()
                },
                if link.last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last error: {}", link.last_error)
                },
            );
        }
        for feed in client.feeds().await?.feeds {
            let ago = |ms: i64| {
                if ms > 0 {
                    format!(
                        "{:.0} s ago",
                        (entente::engine::now_ms() - ms).max(0) as f64 / 1000.0
                    )
                } else {
                    "never".to_owned()
                }
            };
            println!(
                "feed {:<24} {} {} last poll {}, last success {}, items {} ingested / {} unchanged, objects {} fetched / {} skipped, polls {} ({} failed){}{}",
                feed.name,
                feed.kind,
                feed.url,
                ago(feed.last_poll_unix_ms),
                ago(feed.last_success_unix_ms),
                feed.items_ingested,
                feed.items_unchanged,
                feed.objects_fetched,
                feed.objects_skipped,
                feed.polls,
                feed.failures,
                if feed.checkpoint.is_empty() {
                    String::new()
                } else {
                    format!("; at {}", feed.checkpoint)
                },
                if feed.last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last error: {}", feed.last_error)
                },
            );
        }
        for limit in client.limits().await?.limits {
            println!(
                "limit {:<24} {:>16}{}",
                limit.name,
                limit.value,
                if limit.counted {
                    format!("   refused {} since start", limit.refused)
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(deadline) = wait {
        if hello.caller_role != "admin" {
            bail!(
                "--wait follows the node's links, which only its operator (its own certificate) may read"
            );
        }
        entente::cli::wait_for_sync(&client, deadline).await?;
    }
    Ok(())
}
