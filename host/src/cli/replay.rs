//! `switchyard policy replay CAPTURE.jsonl OLD.wasm NEW.wasm`: every
//! captured request (`l7/capture.rs`; any `policy test --cases` file)
//! through two versions of a policy, offline, and how their decisions
//! differ, by the kinds shadow mode counts (`policy/shadow.rs`). Exits 1
//! when any decision differs, for CI pipelines.
//!
//! Deterministic: each side has its own engine, so its own fresh KV; the
//! clocks of both stand at each request's captured time; random numbers
//! are seeded (`--seed`), the `random` import again at each request
//! (`policy/host_api.rs`, `Frozen`). Each version reads its own config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{cases, exchange};
use crate::policy::shadow::{KINDS, kind};
use crate::policy::{
    self, Directory, EngineSettings, Frozen, Limits, Policy, PolicyEngine, PolicyKind,
};
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct PolicyReplay {
    /// Captured requests: JSON lines in the `policy test --cases` format.
    pub capture: PathBuf,
    /// The version serving now (`.wasm`).
    pub old: PathBuf,
    /// The version to compare with it.
    pub new: PathBuf,
    /// OLD's JSON config (default: the `.json` beside it).
    #[arg(long)]
    pub old_config: Option<PathBuf>,
    /// NEW's JSON config (default: the `.json` beside it).
    #[arg(long)]
    pub new_config: Option<PathBuf>,
    /// A switchyard configuration whose pools both see.
    #[arg(long)]
    pub pools: Option<PathBuf>,
    /// The listener's default pool, as the policies see it.
    #[arg(long)]
    pub pool: Option<String>,
    /// How many differences to print.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// The seed of both sides' random numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What a replay found (the report is printed as it goes).
#[derive(Debug, Default)]
pub struct Replayed {
    pub same: usize,
    /// By [`KINDS`].
    pub differ: [usize; KINDS.len()],
    /// Requests whose call failed, per version (old, new).
    pub errors: (usize, usize),
}

impl Replayed {
    pub fn differing(&self) -> usize {
        self.differ.iter().sum()
    }
}

/// One side: a policy on an engine of its own, with its clock.
struct Side {
    policy: Arc<Policy>,
    frozen: Arc<Frozen>,
}

async fn side(
    wasm_path: &Path,
    config: Option<&Path>,
    seed: u64,
    directory: &Arc<dyn Directory>,
) -> anyhow::Result<Side> {
    let frozen = Arc::new(Frozen {
        seed,
        ..Frozen::default()
    });
    let engine = PolicyEngine::new(&EngineSettings {
        frozen: Some(frozen.clone()),
        ..Default::default()
    })?;
    let dir = match wasm_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (wasm, cfg) =
        policy::read_policy_files(dir, wasm_path, config, policy::FileCaps::default())?;
    let policy = engine
        .load_bytes(
            wasm_path,
            wasm,
            cfg,
            Some(PolicyKind::Http),
            Limits::default(),
            directory.clone(),
        )
        .await?;
    Ok(Side { policy, frozen })
}

/// Runs the replay; prints the differences as found and a summary.
pub async fn policy_replay(r: &PolicyReplay) -> anyhow::Result<Replayed> {
    let directory = super::directory_for(r.pools.as_deref())?;
    let old = side(&r.old, r.old_config.as_deref(), r.seed, &directory).await?;
    let new = side(&r.new, r.new_config.as_deref(), r.seed, &directory).await?;
    let text = std::fs::read_to_string(&r.capture)
        .with_context(|| format!("cannot read {}", r.capture.display()))?;
    let file = r.capture.display().to_string();
    let pool = r.pool.as_deref();
    let mut out = Replayed::default();
    let mut shown = 0;
    for (i, line) in text.lines().enumerate() {
        let Some(case) = cases::parse(&file, i + 1, line)? else {
            continue;
        };
        let at = case.at_unix_ms.unwrap_or(0);
        let decide = async |s: &Side| {
            s.frozen.wall_ms.store(at, Relaxed);
            // Never 0, the load's smoke call's: line 1 reseeds too.
            s.frozen.request.store(i as u64 + 1, Relaxed);
            let mut view = case.view()?;
            let conn = exchange::connection(case.client(), pool, None)?;
            anyhow::Ok(
                s.policy
                    .on_request(&mut view, &conn, pool, &directory)
                    .await,
            )
        };
        let (a, b) = (decide(&old).await?, decide(&new).await?);
        out.errors.0 += usize::from(a.is_err());
        out.errors.1 += usize::from(b.is_err());
        let differs = match (&a, &b) {
            (Ok(a), Ok(b)) => kind(a, b, pool),
            (Err(_), Err(_)) => None,
            _ => Some(KINDS.len() - 1),
        };
        let Some(k) = differs else {
            out.same += 1;
            continue;
        };
        out.differ[k] += 1;
        if shown < r.show {
            shown += 1;
            let show = |d: &Result<policy::HttpDecision, policy::PolicyError>| match d {
                Ok(d) => d.to_json(),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            println!("{file}:{}  {}  [{}]", i + 1, case.label(), KINDS[k]);
            println!("      old {}", show(&a));
            println!("      new {}", show(&b));
        }
    }
    let kinds: Vec<String> = KINDS
        .iter()
        .zip(&out.differ)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "{} requests: {} identical, {} differ ({}); errors: old {}, new {}",
        out.same + out.differing(),
        out.same,
        out.differing(),
        kinds.join(", "),
        out.errors.0,
        out.errors.1
    );
    Ok(out)
}
