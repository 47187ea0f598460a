//! `switchyard policy replay` on a capture a listener made: the binary,
//! run as a CI pipeline would, shows the differences the test expects and
//! exits 1; the same version against itself exits 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_tests::*;

fn replay(capture: &Path, old_cfg: &Path, new_cfg: &Path, wasm: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["policy", "replay"])
        .arg(capture)
        .arg(wasm)
        .arg(wasm)
        .arg("--old-config")
        .arg(old_cfg)
        .arg("--new-config")
        .arg(new_cfg)
        .args(["--pool", "web", "--show", "2"])
        .output()
        .expect("switchyard runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{text}{err}"))
}

#[tokio::test]
async fn a_replay_of_a_capture_shows_the_differences_and_exits_1() {
    let web = TestBackend::start("web").await;
    let dir = temp_dir("replay");
    let wasm = dir.join("m.wasm");
    std::fs::copy(repo().join("tests/fixtures/wasm/misbehave.wasm"), &wasm).unwrap();
    std::fs::write(dir.join("m.json"), "{}").unwrap();
    let capture = dir.join("capture.jsonl");
    let config = format!(
        "[policies]\ndir = \"{}\"\n[pools.web]\nbackends = [\"{{web}}\"]\n[pools.bad]\nbackends = [\"{{web}}\"]\n\
         [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"m\"\n\
         capture = {{ file = \"{}\", sample = 1.0 }}\n",
        dir.display(),
        capture.display()
    );
    let sy = start_switchyard(&config, &BTreeMap::from([("web", web.addr)])).await;
    let c = client(false);
    for path in ["/a", "/t/1", "/b", "/t/2", "/t/3", "/random"] {
        assert_eq!(get(&c, sy.addr("l"), path, &[]).await.status, 200);
    }
    let started = Instant::now();
    while std::fs::read_to_string(&capture)
        .unwrap_or_default()
        .lines()
        .count()
        < 6
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "capture not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sy.shutdown(Duration::from_secs(5)).await;

    let (old, new) = (dir.join("old.json"), dir.join("new.json"));
    std::fs::write(&old, "{}").unwrap();
    std::fs::write(&new, r#"{"route-to-bad": true}"#).unwrap();
    let (code, said) = replay(&capture, &old, &new, &wasm);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("6 requests: 3 identical, 3 differ (pool 3, backend 0, respond_vs_forward 0, edits 0, error 0); errors: old 0, new 0"),
        "{said}"
    );
    // The first two differences, with both decisions.
    assert_eq!(said.matches("[pool]").count(), 2, "{said}");
    assert!(said.contains("captured GET /t/1"), "{said}");
    assert!(said.contains(r#""pool":"bad""#), "{said}");

    // A version that traps where the other forwards: errors, per side.
    std::fs::write(&new, r#"{"trap-on-t": true}"#).unwrap();
    let (code, said) = replay(&capture, &old, &new, &wasm);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("error 3); errors: old 0, new 3"), "{said}");

    // The same version on both sides: identical, exit 0, though
    // `/random` answers with a random number and three clock readings:
    // both sides' random is seeded, their clocks stand at its captured time.
    let (code, said) = replay(&capture, &old, &old, &wasm);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("6 requests: 6 identical, 0 differ"), "{said}");
}
