//! Cost of body inspection: a warm `json-router` body-hook call
//! (`Policy::on_request_body`, as the proxy makes it: the body copied
//! into the guest, parsed there, the decision validated) for JSON bodies
//! of 0.1 to 64 KiB. The slope between sizes is the cost per KiB.
//!
//! Needs `cargo xtask build-policies` first. Run with
//! `cargo bench -p switchyard --bench body_hook`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
// Only `request` of the shared helpers is used here.
#[allow(dead_code)]
mod common;

use switchyard::policy::{
    Directory, EngineSettings, Limits, OpenDirectory, PolicyEngine, PolicyKind,
};

/// A JSON object of about `bytes` bytes whose `tenant` is last, so the
/// parser walks all of it.
fn body(bytes: usize) -> Vec<u8> {
    let mut b = br#"{"pad": ""#.to_vec();
    let fill = bytes.saturating_sub(30);
    b.extend(std::iter::repeat_n(b'x', fill));
    b.extend(br#"", "tenant": "a"}"#);
    b
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let file = root.join("policies/json-router.wasm");
    let wasm = std::fs::read(&file).expect("run `cargo xtask build-policies` first");
    let config = std::fs::read_to_string(root.join("policies/json-router.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = PolicyEngine::new(&EngineSettings::default()).unwrap();
    let dir: Arc<dyn Directory> = Arc::new(OpenDirectory);
    let policy = rt
        .block_on(engine.load_bytes(
            &file,
            wasm,
            config,
            Some(PolicyKind::Http),
            Limits {
                max_calls: u64::MAX,
                ..Limits::default()
            },
            dir.clone(),
        ))
        .unwrap();
    let mut g = c.benchmark_group("json-router body hook");
    for kib in [0.1f64, 1.0, 4.0, 16.0, 64.0] {
        let data = body((kib * 1024.0) as usize);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(kib), &data, |b, data| {
            b.to_async(&rt).iter_custom(|iters| {
                let (policy, dir, data) = (policy.clone(), dir.clone(), data.clone());
                let mut req = common::request("/orders");
                async move {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let (d, _) = policy
                            .on_request_body(&mut req, &data, None, Some("web"), &dir)
                            .await;
                        black_box(d.ok());
                    }
                    started.elapsed()
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
