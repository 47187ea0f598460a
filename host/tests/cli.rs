//! The `switchyard` binary's offline commands: `policy test` and `check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchyard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn require(rel: &str) {
    assert!(
        repo().join(rel).is_file(),
        "{rel} is missing: run `cargo xtask build-policies` first"
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn policy_test_prints_the_decision_as_one_json_line() {
    require("policies/path-router.wasm");
    let o = switchyard(&[
        "policy",
        "test",
        "policies/path-router.wasm",
        "--config",
        "policies/path-router.json",
        "--request",
        "GET /api/users",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["forward"]["pool"], "api", "{out}");
}

#[test]
fn policy_test_runs_the_connection_hook_with_sni() {
    require("policies/sni-router.wasm");
    let o = switchyard(&[
        "policy",
        "test",
        "policies/sni-router.wasm",
        "--sni",
        "b.test",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["forward"]["pool"], "b");
}

#[test]
fn policy_test_shows_a_direct_response() {
    require("policies/rate-limit.wasm");
    let dir = temp_dir("rl");
    let cfg = dir.join("rl.json");
    std::fs::write(&cfg, r#"{"rate_per_second": 1, "burst": 1}"#).unwrap();
    // Each run is a new process with a new store: the one call forwards.
    let o = switchyard(&[
        "policy",
        "test",
        "policies/rate-limit.wasm",
        "--config",
        cfg.to_str().unwrap(),
        "--client",
        "198.51.100.1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.get("forward").is_some(), "{v}");

    require("policies/deny-list.wasm");
    let o = switchyard(&[
        "policy",
        "test",
        "policies/deny-list.wasm",
        "--request",
        "GET /admin/users",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["respond"]["status"], 403, "{v}");
}

#[test]
fn policy_test_reports_a_bad_file_and_fails() {
    let dir = temp_dir("bad");
    let f = dir.join("broken.wasm");
    std::fs::write(&f, b"definitely not wasm").unwrap();
    let o = switchyard(&["policy", "test", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("broken.wasm: not a WebAssembly binary"), "{e}");
}

#[test]
fn check_accepts_the_demo_configuration() {
    require("policies/path-router.wasm");
    let o = switchyard(&["check", "--config", "examples/demo.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_names_file_and_key_for_each_problem() {
    let dir = temp_dir("check");
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[pools.web]
backends = ["127.0.0.1:9001"]
[listeners.a]
protocol = "http"
bind = "127.0.0.1:0"
pool = "ap1"
"#,
    )
    .unwrap();
    let o = switchyard(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(
        e.trim(),
        format!(
            "{}: listeners.a.pool: no pool named \"ap1\" (pools: web)",
            cfg.display()
        )
    );
}

#[test]
fn check_reads_tls_files_and_names_the_key_and_file_of_each_problem() {
    let dir = temp_dir("check-tls");
    std::fs::write(dir.join("a.pem"), "no certificate here").unwrap();
    let cfg = dir.join("tls.toml");
    std::fs::write(
        &cfg,
        r#"
[pools.web]
backends = ["127.0.0.1:9001"]
[pools.secure]
backends = ["127.0.0.1:9443"]
tls = true
ca = "missing-ca.pem"
[listeners.a]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
[listeners.a.tls]
certs = [{ cert = "a.pem", key = "a.key" }]
"#,
    )
    .unwrap();
    let o = switchyard(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let (file, dir) = (cfg.display(), dir.display());
    assert_eq!(
        e.trim(),
        format!(
            "{file}: pools.secure.ca: cannot read {dir}/missing-ca.pem: No such file or directory (os error 2)\n\
             {file}: listeners.a.tls.certs[0].key: cannot read {dir}/a.key: No such file or directory (os error 2)"
        )
    );
    // With the key there, the certificate file itself is read and refused.
    std::fs::write(cfg.with_file_name("a.key"), "").unwrap();
    let e = stderr(&switchyard(&[
        "check",
        "--config",
        &cfg.display().to_string(),
    ]));
    assert!(
        e.contains(&format!(
            "{file}: listeners.a.tls.certs[0].cert: {dir}/a.pem: no CERTIFICATE block in the file"
        )),
        "{e}"
    );
}

#[test]
fn check_compiles_every_policy_and_names_the_broken_one() {
    let dir = temp_dir("policies");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("broken.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let cfg = dir.join("switchyard.toml");
    std::fs::write(
        &cfg,
        r#"
[pools.web]
backends = ["127.0.0.1:9001"]
[listeners.a]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "broken"
[listeners.b]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "web"
policy = "missing"
"#,
    )
    .unwrap();
    let o = switchyard(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].contains("broken.wasm: a core WebAssembly module"),
        "{e}"
    );
    assert!(lines[0].contains("listeners.a"), "{e}");
    assert!(lines[1].contains("missing.wasm: cannot read"), "{e}");
}

#[test]
fn check_initialises_a_policy_with_its_listener_policy_config() {
    require("policies/path-router.wasm");
    let dir = temp_dir("policy-config");
    let bad = dir.join("bad-routes.json");
    std::fs::write(&bad, r#"{"routes": [{"prefix": "api", "pool": "web"}]}"#).unwrap();
    let cfg = dir.join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policies]\ndir = \"{}\"\n[pools.web]\nbackends = [\"127.0.0.1:9001\"]\n[listeners.a]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"path-router\"\npolicy_config = \"bad-routes.json\"\n",
            repo().join("policies").display()
        ),
    )
    .unwrap();
    let o = switchyard(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "the other config must be the one checked"
    );
    let e = stderr(&o);
    assert!(e.contains("must start with '/'"), "{e}");
}

#[test]
fn policy_test_cases_print_a_table_and_a_mismatch_fails() {
    require("policies/path-router.wasm");
    let dir = temp_dir("cases");
    let good = r#"{"request": {"method": "GET", "path": "/api/x", "headers": [["host", "a.test"]]}, "expect": {"forward": {"pool": "api"}}}"#;
    let also = r#"{"name": "strip", "request": {"path": "/images/a.png"}, "expect": {"forward": {"pool": "images", "path": "/a.png"}}}"#;
    let wrong = r#"{"name": "deliberately wrong", "request": {"path": "/api/x"}, "expect": {"forward": {"pool": "images"}}}"#;
    let file = dir.join("cases.jsonl");
    std::fs::write(&file, format!("{good}\n{also}\n{wrong}\n")).unwrap();
    let run = |f: &Path| {
        switchyard(&[
            "policy",
            "test",
            "policies/path-router.wasm",
            "--cases",
            f.to_str().unwrap(),
        ])
    };
    let o = run(&file);
    assert!(!o.status.success(), "a mismatch fails the run");
    let out = stdout(&o);
    assert!(
        out.contains(":1  GET /api/x") && out.starts_with("ok "),
        "{out}"
    );
    assert!(
        out.contains("FAIL") && out.contains(":3  deliberately wrong"),
        "{out}"
    );
    assert!(
        out.contains(r#"expected {"forward":{"pool":"images"}}"#),
        "{out}"
    );
    assert!(out.contains("2 passed, 1 failed"), "{out}");
    std::fs::write(&file, format!("{good}\n{also}\n")).unwrap();
    let o = run(&file);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"));
    // A case without `expect` (a captured request) passes when the
    // policy decides, and shows what it decided.
    std::fs::write(&file, "{\"request\": {\"path\": \"/api/y\"}}\n").unwrap();
    let o = run(&file);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains(r#""pool":"api""#), "{}", stdout(&o));
    std::fs::write(&file, "{\"request\": {}, \"bogus\": 1}\n").unwrap();
    let o = run(&file);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cases.jsonl:1: not a case"),
        "{}",
        stderr(&o)
    );
}

/// Every example policy ships a `cases.jsonl` beside its source, and they
/// all pass against the built policy (the Python, JavaScript and C
/// `path-router`s run the Rust one's, when `SWITCHYARD_LANGS` built them).
#[test]
fn every_example_ships_cases_that_pass() {
    let mut ran = 0;
    for e in std::fs::read_dir(repo().join("guest-examples")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file()
            || !std::fs::read_to_string(&manifest)
                .unwrap()
                .contains("cdylib")
        {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let cases = dir.join("cases.jsonl");
        assert!(cases.is_file(), "guest-examples/{name} has no cases.jsonl");
        let wasm = format!("policies/{name}.wasm");
        require(&wasm);
        let o = switchyard(&["policy", "test", &wasm, "--cases", cases.to_str().unwrap()]);
        assert!(o.status.success(), "{name}:\n{}{}", stdout(&o), stderr(&o));
        ran += 1;
    }
    assert!(ran >= 13, "only {ran} examples");
    let cases = repo().join("guest-examples/path-router/cases.jsonl");
    for lang in ["py", "js", "c"] {
        let wasm = format!("policies/path-router-{lang}.wasm");
        if !repo().join(&wasm).is_file() {
            eprintln!("skipped: {wasm} is not built (SWITCHYARD_LANGS)");
            continue;
        }
        let o = switchyard(&[
            "policy",
            "test",
            &wasm,
            "--config",
            "policies/path-router.json",
            "--cases",
            cases.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{wasm}:\n{}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn policy_test_runs_the_body_and_response_hooks_it_is_given() {
    require("policies/json-router.wasm");
    require("policies/error-pages.wasm");
    let dir = temp_dir("body");
    let body = dir.join("body.json");
    std::fs::write(&body, r#"{"tenant": "b"}"#).unwrap();
    let o = switchyard(&[
        "policy",
        "test",
        "policies/json-router.wasm",
        "--request",
        "POST /orders",
        "--body",
        body.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["forward"]["pool"], "pool_b");
    assert_eq!(v["read_body"]["limit"], 65536);
    let o = switchyard(&[
        "policy",
        "test",
        "policies/error-pages.wasm",
        "--response",
        "503",
        "--response-header",
        "x-from: backend",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["on_response"]["replace"]["status"], 503);
    assert_eq!(
        v["on_response"]["replace"]["body"],
        "<h1>Busy, try again soon</h1>"
    );
}
