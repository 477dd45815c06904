//! The `entente` command: parse the arguments (defined in `entente::cli::args`), set up
//! logging, then hand each subcommand to `entente::cli` (or, for `serve`, load the
//! configuration, start the node and handle signals). Nothing else lives here.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};

use entente::certs::Usage;
use entente::cli::args::{
    CertsCommand, Cli, Command, FormatArg, LedgerCommand, LogFormat, PolicyCommand, StoreCommand,
    TaxiiCommand,
};
use entente::cli::query::ItemOutput;
use entente::cli::{Output, parse_time};
use entente::config::ClientSettings;
use entente::engine::now_ms;
use entente::interop::InputFormat;
use entente::{Config, Node};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's settings (`entente::allocator`), applied before `main` and before the
/// first allocation: mimalloc reserves its first arena with the settings in force then.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static SETTLE_ALLOCATOR: extern "C" fn() = settle_allocator;

#[cfg(target_os = "linux")]
extern "C" fn settle_allocator() {
    entente::allocator::settle();
}

/// How long `serve` lets in-flight calls finish after SIGINT/SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

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
        Command::Store {
            command: StoreCommand::Compact { config },
        } => cli::store::compact(&Config::load(&config)?, output),
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
            let config = cli::status::StatusConfig::load(&config)?;
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
                let known = policy::known_feeds(&config)?;
                let compiled =
                    entente::policy::Policy::compile(&config.policy_spec_knowing(&known));
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
        CertsCommand::Ca { dir, name, days } => setup::create_ca(
            &dir,
            &name.unwrap_or_else(entente::certs::default_ca_name),
            days,
            output,
        ),
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
        CertsCommand::Request { id, out, key } => setup::request(&out, &id, key.as_deref(), output),
        CertsCommand::Sign {
            csr,
            ca_dir,
            client: _,
            node,
            ip,
            dns,
            id,
            days,
        } => {
            let usage = if node {
                Usage::Node { ips: ip, dns }
            } else {
                Usage::Client
            };
            setup::sign(&ca_dir, &csr, &usage, id.as_ref(), days, output)
        }
        CertsCommand::PushCrl { config, crl } => {
            let settings = ClientSettings::load(&config)?;
            runtime()?.block_on(setup::push_crl(&settings, &crl, output))
        }
        CertsCommand::Renew {
            ca_dir,
            id,
            new_key,
            days,
        } => setup::renew(&ca_dir, &id, new_key, days, output),
        CertsCommand::Revoke {
            dir,
            id,
            serial,
            push_to,
        } => match push_to {
            None => setup::revoke(&dir, &id, serial.as_deref(), output),
            Some(config) => {
                let settings = ClientSettings::load(&config)?;
                runtime()?.block_on(setup::revoke_and_push(
                    &dir,
                    &id,
                    serial.as_deref(),
                    &settings,
                    output,
                ))
            }
        },
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
