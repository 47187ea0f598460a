//! Command line: `run`, `check`, `policy test` (one request, or a file
//! of cases: `cases.rs`; both through `exchange.rs`) and `policy replay`
//! (`replay.rs`).

mod cases;
mod exchange;
mod replay;

pub use replay::{PolicyReplay, Replayed, policy_replay};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::policy::{
    self, Directory, EngineSettings, Limits, OpenDirectory, PolicyEngine, PolicyKind, RequestView,
    StaticDirectory, types,
};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A load balancer programmed with WebAssembly"
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `warn,policy::rate-limit=debug`
    /// (default: `RUST_LOG`, else `info`).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// When a listener's policy file is removed, fall back to the pool's
        /// algorithm instead of keeping the last loaded version.
        #[arg(long)]
        strict_policies: bool,
    },
    /// Check a configuration and compile every policy it names.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run one hook of a policy offline and print its decision as JSON.
    Test(Box<PolicyTest>),
    /// Run captured requests through two versions of a policy and show
    /// how their decisions differ; exit 1 when any does.
    Replay(Box<PolicyReplay>),
}

#[derive(Debug, clap::Args)]
pub struct PolicyTest {
    /// The policy component (`.wasm`).
    pub file: PathBuf,
    /// The policy's JSON config (default: the `.json` beside the `.wasm`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The request to send, as "METHOD PATH[?QUERY]".
    #[arg(long, default_value = "GET /")]
    pub request: String,
    /// A request header, "name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The client IP address.
    #[arg(long, default_value = "127.0.0.1")]
    pub client: String,
    /// Run the connection hook with this TLS server name instead.
    #[arg(long)]
    pub sni: Option<String>,
    /// The listener's default pool, as the policy sees it.
    #[arg(long)]
    pub pool: Option<String>,
    /// A switchyard configuration whose pools the decision is checked
    /// against (and that the `backends` import lists).
    #[arg(long)]
    pub pools: Option<PathBuf>,
    /// A file whose bytes are the request body, for a policy that reads
    /// it (`read-body`).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// The upstream response's status: runs the response hook when the
    /// decision asks for it.
    #[arg(long)]
    pub response: Option<u16>,
    /// An upstream response header, "name: value" (repeatable).
    #[arg(long = "response-header")]
    pub response_headers: Vec<String>,
    /// Run every case of this file (JSON lines: request, optional
    /// response and canned calls, expected decision) instead of one
    /// request; prints a table and fails when any case does not match.
    #[arg(long, conflicts_with_all = ["request", "headers", "sni", "body", "response"])]
    pub cases: Option<PathBuf>,
}

/// What `policy test` found.
pub enum Tested {
    /// One run's decision, as one line of JSON.
    Decision(serde_json::Value),
    /// A cases file: how many did not match (the table is printed).
    Cases { failed: usize },
}

fn engine_for(config: Option<&Config>) -> anyhow::Result<Arc<PolicyEngine>> {
    PolicyEngine::new(&EngineSettings {
        cache_dir: config.and_then(|c| c.policies.cache_dir.clone()),
        pool: config.map(|c| c.policies.pool).unwrap_or_default(),
        kv: config.map(|c| c.policies.kv).unwrap_or_default(),
        // Offline: every run has its own memory store, never a shared one.
        ..Default::default()
    })
}

/// The pools of a configuration as a policy sees them offline.
pub fn static_directory(config: &Config) -> StaticDirectory {
    StaticDirectory::new(
        config
            .pools
            .iter()
            .map(|(name, pool)| {
                let backends = pool
                    .backends
                    .iter()
                    .map(|b| types::Backend {
                        name: b.name.clone(),
                        address: b.address.to_string(),
                        weight: b.weight,
                        healthy: true,
                        in_flight: 0,
                    })
                    .collect();
                (name.clone(), backends)
            })
            .collect(),
    )
}

/// `switchyard check`: every problem, one line each; `Ok` when none.
pub async fn check(config_path: &Path) -> Result<(), Vec<String>> {
    let config = Config::load(config_path).map_err(|e| vec![e.to_string()])?;
    crate::daemon::check(config).await
}

fn parse_request(t: &PolicyTest) -> anyhow::Result<Box<RequestView>> {
    let (method, target) = t
        .request
        .split_once(' ')
        .context("--request must look like \"GET /path\"")?;
    let target = target.trim();
    if !target.starts_with('/') {
        bail!("--request path must start with '/': {target:?}");
    }
    let headers = t
        .headers
        .iter()
        .map(|h| name_value(h, "--header"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    exchange::request(method, target, &headers)
}

fn name_value(h: &str, flag: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = h
        .split_once(':')
        .with_context(|| format!("{flag} must look like \"name: value\": {h:?}"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// The pools of the configuration `pools` names, as a policy sees them
/// offline; without one any name passes.
fn directory_for(pools: Option<&Path>) -> anyhow::Result<Arc<dyn Directory>> {
    Ok(match pools.map(Config::load).transpose()? {
        Some(c) => Arc::new(static_directory(&c)),
        None => Arc::new(OpenDirectory),
    })
}

/// The policy file loaded as `policy test` runs it, with the pools it
/// sees (`--pools`, else any name passes).
async fn load(t: &PolicyTest) -> anyhow::Result<(Arc<policy::Policy>, Arc<dyn Directory>)> {
    let pools = t.pools.as_deref().map(Config::load).transpose()?;
    let engine = engine_for(pools.as_ref())?;
    let directory = directory_for(t.pools.as_deref())?;
    let dir = match t.file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (wasm, config) = policy::read_policy_files(
        dir,
        &t.file,
        t.config.as_deref(),
        policy::FileCaps::default(),
    )?;
    // A cases file runs whichever world the component is.
    let expected = match (&t.cases, &t.sni) {
        (Some(_), _) => None,
        (None, Some(_)) => Some(PolicyKind::Connection),
        (None, None) => Some(PolicyKind::Http),
    };
    let loaded = engine
        .load_bytes(
            &t.file,
            wasm,
            config,
            expected,
            Limits::default(),
            directory.clone(),
        )
        .await?;
    Ok((loaded, directory))
}

/// The body and upstream response a single run gives the policy.
fn extras(t: &PolicyTest) -> anyhow::Result<exchange::Extras> {
    let body = match &t.body {
        Some(f) => Some(
            std::fs::read(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .into(),
        ),
        None => None,
    };
    let response = match t.response {
        Some(status) => Some(exchange::GivenResponse {
            status,
            headers: t
                .response_headers
                .iter()
                .map(|h| name_value(h, "--response-header"))
                .collect::<anyhow::Result<_>>()?,
            body: String::new(),
        }),
        None => None,
    };
    Ok(exchange::Extras { body, response })
}

/// `switchyard policy test`: one request's decision, or a cases file's
/// table.
pub async fn policy_test(t: &PolicyTest) -> anyhow::Result<Tested> {
    let (loaded, directory) = load(t).await?;
    let pool = t.pool.as_deref();
    if let Some(cases) = &t.cases {
        let text = std::fs::read_to_string(cases)
            .with_context(|| format!("cannot read {}", cases.display()))?;
        let name = cases.display().to_string();
        let failed = cases::run(&loaded, &name, &text, pool, &directory).await?;
        return Ok(Tested::Cases { failed });
    }
    let conn = exchange::connection(&t.client, pool, t.sni.as_deref())?;
    if t.sni.is_some() {
        let d = loaded.on_connect(&conn, pool, &directory).await?;
        return Ok(Tested::Decision(d.to_json()));
    }
    let mut request = parse_request(t)?;
    let extras = extras(t)?;
    let out = exchange::run(&loaded, &mut request, &conn, pool, &directory, &extras).await?;
    Ok(Tested::Decision(out))
}
