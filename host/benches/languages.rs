//! `path-router` in each language, side by side: component size, compile
//! time (no cache), load time from the compile cache, a fresh instance
//! (instantiate + `init` + one call) and a warm call. Prints a Markdown
//! table for `bench/RESULTS.md`.
//!
//! Needs `cargo xtask build-policies --all-languages` first (languages
//! whose build is missing are left out). Run with
//! `cargo bench -p switchyard --bench languages`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use switchyard::policy::{
    Directory, EngineSettings, Limits, OpenDirectory, PolicyEngine, PolicyKind,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let config = std::fs::read_to_string(root.join("policies/path-router.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir: Arc<dyn Directory> = Arc::new(OpenDirectory);
    let cache = std::env::temp_dir().join(format!("switchyard-lang-bench-{}", std::process::id()));
    let (mut req, conn) = (common::request("/images/cat.png"), common::connection());
    println!(
        "| language | component | compile (no cache) | load from cache | fresh instance (instantiate + init + call) | warm call |"
    );
    println!("|---|---|---|---|---|---|");
    for (lang, name) in [
        ("Rust", "path-router"),
        ("Python", "path-router-py"),
        ("JavaScript", "path-router-js"),
        ("C", "path-router-c"),
    ] {
        let file = root.join(format!("policies/{name}.wasm"));
        let Ok(wasm) = std::fs::read(&file) else {
            eprintln!("{lang}: {} not built; skipped", file.display());
            continue;
        };
        // Compile without a cache.
        let cold = PolicyEngine::new(&EngineSettings::default()).unwrap();
        let started = Instant::now();
        cold.compile(name, &file, &wasm, &config, Some(PolicyKind::Http))
            .expect("compiles");
        let compile = started.elapsed();
        // Fill a cache, then load from it with fresh engines.
        let filler = PolicyEngine::new(&EngineSettings {
            cache_dir: Some(cache.clone()),
            ..Default::default()
        })
        .unwrap();
        filler
            .compile(name, &file, &wasm, &config, Some(PolicyKind::Http))
            .unwrap();
        let mut loads = Vec::new();
        for _ in 0..5 {
            let engine = PolicyEngine::new(&EngineSettings {
                cache_dir: Some(cache.clone()),
                ..Default::default()
            })
            .unwrap();
            let started = Instant::now();
            engine
                .compile(name, &file, &wasm, &config, Some(PolicyKind::Http))
                .unwrap();
            loads.push(started.elapsed());
            assert_eq!(
                engine.cache_hits(),
                1,
                "{lang}: not answered from the cache"
            );
        }
        let load = |limits: Limits| {
            rt.block_on(filler.load_bytes(
                &file,
                wasm.clone(),
                config.clone(),
                Some(PolicyKind::Http),
                limits,
                dir.clone(),
            ))
            .unwrap()
        };
        let fresh = load(Limits {
            max_idle: 0,
            init_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            memory_bytes: 256 << 20,
            ..Limits::default()
        });
        let mut fresh_calls = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            rt.block_on(fresh.on_request(&mut req, &conn, Some("web"), &dir))
                .unwrap();
            fresh_calls.push(started.elapsed());
        }
        let warm = load(Limits {
            max_calls: u64::MAX,
            timeout: Duration::from_secs(1),
            memory_bytes: 256 << 20,
            ..Limits::default()
        });
        let mut warm_calls = Vec::new();
        for _ in 0..10 {
            let n = 2_000;
            let started = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    warm.on_request(&mut req, &conn, Some("web"), &dir)
                        .await
                        .unwrap();
                }
            });
            warm_calls.push(started.elapsed() / n);
        }
        println!(
            "| {lang} | {:.1} KiB | {} | {} | {} | {} |",
            wasm.len() as f64 / 1024.0,
            ms(compile),
            ms(median(loads)),
            us(median(fresh_calls)),
            us(median(warm_calls)),
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}
