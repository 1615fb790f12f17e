//! Command-line parsing and the small commands (`check`, `routes explain`, `version`,
//! `init-iptables`).

use crate::config::{build_table, Config};
use clap::{Args, Parser, Subcommand, ValueEnum};
use outbound_exchange::routes::{load_routes_file, RouteTable};
use proxy_core::iptables;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "authbridge",
    version,
    about = "Zero-trust identity for AI agents at the network edge"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// The sidecar / gateway: outbound, inbound and admin listeners.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Zero-setup local gateway: in-memory dev identity, embedded dev issuer, outbound proxy
    /// on 127.0.0.1 (DEVELOPMENT ONLY; inbound validation is not in this build yet).
    Dev(crate::dev::DevArgs),
    /// Validate config and routes; print problems; exit non-zero on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Route inspection.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Install the transparent-capture iptables rules (kagenti proxy-init compatible).
    InitIptables(InitIptablesArgs),
    /// Version and build info.
    Version,
}

#[derive(Subcommand)]
pub enum RoutesCommand {
    /// Show which route each host matches, with its action, audience and scopes.
    Explain {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A routes.yaml to use instead of the config's routes_file.
        #[arg(long)]
        routes: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "HOST[:PORT]")]
        hosts: Vec<String>,
    },
}

#[derive(Args)]
pub struct InitIptablesArgs {
    /// Outbound listener port [env PROXY_PORT, default 15123].
    #[arg(long)]
    proxy_port: Option<String>,
    /// Inbound listener port [env INBOUND_PROXY_PORT, default 15124].
    #[arg(long)]
    inbound_proxy_port: Option<String>,
    /// UID the proxy runs as; its traffic is never captured [env PROXY_UID, default 1337].
    #[arg(long)]
    proxy_uid: Option<String>,
    /// Admin port, never captured [env ADMIN_PORT, default 9901].
    #[arg(long)]
    admin_port: Option<String>,
    /// Comma-separated ports (or A-B ranges) not captured outbound [env OUTBOUND_PORTS_EXCLUDE].
    #[arg(long)]
    outbound_ports_exclude: Option<String>,
    /// Comma-separated ports (or A-B ranges) not captured inbound [env INBOUND_PORTS_EXCLUDE].
    #[arg(long)]
    inbound_ports_exclude: Option<String>,
    /// The pod's IP [env POD_IP].
    #[arg(long)]
    pod_ip: Option<String>,
    /// IPv6 rules: auto | on | off [env CAPTURE_IPV6, default auto].
    #[arg(long)]
    ipv6: Option<String>,
    /// Force the iptables backend (legacy | nft) instead of detecting it.
    #[arg(long)]
    backend: Option<String>,
    /// Print the rules in iptables-restore format and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Version => {
            println!(
                "authbridge {} ({} {}; git {}; crypto aws-lc-rs)",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                option_env!("AUTHBRIDGE_GIT_SHA").unwrap_or("unknown"),
            );
            ExitCode::SUCCESS
        }
        Command::Check { config } => check(&config),
        Command::Routes {
            command:
                RoutesCommand::Explain {
                    config,
                    routes,
                    json,
                    hosts,
                },
        } => explain(config.as_deref(), routes.as_deref(), json, &hosts),
        Command::InitIptables(args) => init_iptables(args),
        Command::Run { config } => crate::run::run(&config, cli.log_format),
        Command::Dev(args) => crate::dev::dev(args, cli.log_format),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Loads config + routes the way `run` does. Returns (config, table, warnings).
pub fn load_all(
    config: Option<&Path>,
    routes_override: Option<&Path>,
) -> Result<(Config, RouteTable, Vec<String>), String> {
    let (cfg, name) = match config {
        Some(p) => (
            Config::load(p).map_err(|e| e.to_string())?,
            p.display().to_string(),
        ),
        None => (Config::default(), "<defaults>".to_string()),
    };
    let eff = cfg.validate(&name).map_err(|e| e.to_string())?;
    let file_routes = match routes_override
        .map(Path::to_path_buf)
        .or(eff.routes_file.clone())
    {
        Some(p) => {
            if routes_override.is_some() && !p.exists() {
                return Err(format!("{}: routes file not found", p.display()));
            }
            load_routes_file(&p).map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    let table = build_table(file_routes, &eff.inline_routes, cfg.outbound.default_policy);
    Ok((cfg, table, eff.warnings))
}

fn check(path: &Path) -> ExitCode {
    let (cfg, table, mut warnings) = match load_all(Some(path), None) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Err(e) = cfg.validate_exchange(&path.display().to_string(), &table) {
        return fail(e);
    }
    if std::fs::read_to_string(path)
        .map(|t| t.trim().is_empty())
        .unwrap_or(false)
    {
        warnings.push(format!(
            "{}: empty config: all traffic passes through and nothing is validated",
            path.display()
        ));
    }
    warnings.extend(table.warnings());
    for w in &warnings {
        println!("warning: {w}");
    }
    println!(
        "{}: OK ({} route(s), default policy {}, {} warning(s))",
        path.display(),
        table.routes.len(),
        table.default_policy,
        warnings.len()
    );
    ExitCode::SUCCESS
}

fn explain(config: Option<&Path>, routes: Option<&Path>, json: bool, hosts: &[String]) -> ExitCode {
    let (_, table, _) = match load_all(config, routes) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let mut out = std::io::stdout().lock();
    for h in hosts {
        let line = if json {
            table.explain_json(h).to_string()
        } else {
            table.explain_text(h)
        };
        let _ = writeln!(out, "{line}");
    }
    ExitCode::SUCCESS
}

fn init_iptables(args: InitIptablesArgs) -> ExitCode {
    let flags = [
        ("PROXY_PORT", &args.proxy_port),
        ("INBOUND_PROXY_PORT", &args.inbound_proxy_port),
        ("PROXY_UID", &args.proxy_uid),
        ("ADMIN_PORT", &args.admin_port),
        ("OUTBOUND_PORTS_EXCLUDE", &args.outbound_ports_exclude),
        ("INBOUND_PORTS_EXCLUDE", &args.inbound_ports_exclude),
        ("POD_IP", &args.pod_ip),
        ("CAPTURE_IPV6", &args.ipv6),
    ];
    let get = |k: &str| -> Option<String> {
        flags
            .iter()
            .find(|(name, _)| *name == k)
            .and_then(|(_, v)| (*v).clone())
            .or_else(|| std::env::var(k).ok())
    };
    let cfg = match iptables::CaptureConfig::from_env(get) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let backend = match args.backend.as_deref().map(str::parse::<iptables::Backend>) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(_)) => {
            return fail(format!(
                "--backend: {:?} is not legacy or nft",
                args.backend.unwrap_or_default()
            ))
        }
    };
    let runner = iptables::Runner {
        netns: None,
        backend,
    };
    match iptables::apply_in(&cfg, args.dry_run, &runner) {
        Ok(report) => {
            if args.dry_run {
                for fam in &report.families {
                    println!("# {fam:?}");
                    print!("{}", iptables::render(&cfg, *fam));
                }
                eprintln!("dry run: {report}");
            } else {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_config_error() => fail(e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
