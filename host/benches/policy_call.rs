//! Cost of one policy call: a warm `path-router` call (instance reused),
//! and a fresh one (instantiate + `init` + call), through the same
//! `Policy::on_request` path the proxy uses, decision validation included.
//!
//! Needs `cargo xtask build-policies` first. Run with
//! `cargo bench -p switchyard --bench policy_call`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
mod common;

use switchyard::policy::{
    Directory, EngineSettings, Limits, OpenDirectory, PolicyEngine, PolicyKind, RequestView,
};

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let file = root.join("policies/path-router.wasm");
    let wasm = std::fs::read(&file).expect("run `cargo xtask build-policies` first");
    let config = std::fs::read_to_string(root.join("policies/path-router.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = PolicyEngine::new(&EngineSettings::default()).unwrap();
    let dir: Arc<dyn Directory> = Arc::new(OpenDirectory);
    let load = |limits: Limits| {
        rt.block_on(engine.load_bytes(
            &file,
            wasm.clone(),
            config.clone(),
            Some(PolicyKind::Http),
            limits,
            dir.clone(),
        ))
        .unwrap()
    };
    let warm = load(Limits {
        max_calls: u64::MAX,
        ..Limits::default()
    });
    let fresh = load(Limits {
        max_idle: 0,
        ..Limits::default()
    });
    let conn = common::connection();

    // Each iteration lends the same request head to the call and gets it
    // back, as the proxy does.
    let calls = |policy: &Arc<switchyard::policy::Policy>, req: Box<RequestView>| {
        let (policy, conn, dir) = (policy.clone(), conn.clone(), dir.clone());
        move |iters: u64| {
            let (policy, conn, dir, mut req) =
                (policy.clone(), conn.clone(), dir.clone(), req.clone());
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(
                        policy
                            .on_request(&mut req, &conn, Some("web"), &dir)
                            .await
                            .ok(),
                    );
                }
                started.elapsed()
            }
        }
    };

    let mut g = c.benchmark_group("path-router");
    g.bench_function("warm call", |b| {
        b.to_async(&rt)
            .iter_custom(calls(&warm, common::request("/api/users/42")))
    });
    // The policy reads only the path: ten more headers should cost nothing.
    g.bench_function("warm call, 10 more headers", |b| {
        b.to_async(&rt).iter_custom(calls(
            &warm,
            common::request_with("/api/users/42?verbose=1", 10),
        ))
    });
    g.bench_function("fresh instance (instantiate + init + call)", |b| {
        b.to_async(&rt)
            .iter_custom(calls(&fresh, common::request("/api/users/42")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
