//! `switchyard check` refuses exactly what `switchyard run` refuses: both
//! build the same plan (`daemon/plan.rs`). Each broken configuration
//! below is refused by both, with the same problems, and a good one is
//! accepted by both. Bind-time errors are the one difference (`check`
//! binds nothing), so every listener binds port 0 on loopback.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const ROUTES: &str = "policy_config = \"policies/routes.json\"\n";
const GOOD_ROUTES: &[u8] = br#"{"routes": [{"prefix": "/", "pool": "web"}]}"#;

const POOL: &str = "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n";

fn http(extra: &str) -> String {
    format!(
        "{POOL}[listeners.a]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{extra}"
    )
}

fn with_policy(policy: &str, extra: &str) -> String {
    format!(
        "[policies]\ndir = \"policies\"\n{}",
        http(&format!("policy = \"{policy}\"\n{extra}"))
    )
}

/// Name, configuration, and files written beside it (`policies/` holds
/// the repository's built policies, copied, plus these).
struct Case {
    name: &'static str,
    toml: String,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn case(name: &'static str, toml: impl Into<String>) -> Case {
    Case {
        name,
        toml: toml.into(),
        files: Vec::new(),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        case("not toml", "[pools.web\n"),
        case("an unknown key", format!("{POOL}colour = \"red\"\n")),
        case(
            "a listener's pool that does not exist",
            http("").replace("pool = \"web\"", "pool = \"nope\""),
        ),
        case(
            "an unknown protocol",
            http("").replace("\"http\"", "\"sctp\""),
        ),
        case(
            "a bind that is not an address",
            http("").replace("127.0.0.1:0", "localhost"),
        ),
        case("a pool without backends", "[pools.web]\nbackends = []\n"),
        case(
            "a backend that is not an address",
            "[pools.web]\nbackends = [\"127.0.0.1\"]\n",
        ),
        case(
            "a zero weight",
            "[pools.web]\nbackends = [{ address = \"127.0.0.1:9\", weight = 0 }]\n",
        ),
        case(
            "a zero policy timeout",
            format!("[policies]\ntimeout_ms = 0\n{POOL}"),
        ),
        case("a zero max_connections", http("max_connections = 0\n")),
        case("a head cap under 8 KiB", http("max_header_bytes = 100\n")),
        case(
            "an http key on a tcp listener",
            format!(
                "{POOL}[listeners.t]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\nmax_uri_bytes = 10\n"
            ),
        ),
        case(
            "a head limit on a udp listener",
            format!(
                "{POOL}[listeners.u]\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\nmax_headers = 10\n"
            ),
        ),
        case(
            "a ClientHello key on an http listener",
            http("sni_peek_timeout_ms = 500\n"),
        ),
        case(
            "policy_config without a policy",
            http("policy_config = \"x.json\"\n"),
        ),
        case(
            "a health path without a slash",
            format!("{POOL}[pools.web.health]\nkind = \"http\"\npath = \"x\"\n"),
        ),
        case("a missing policy file", with_policy("absent", "")),
        case(
            "a policy with a bad config",
            with_policy("path-router", "policy_config = \"policies/bad.json\"\n"),
        ),
        case(
            "a connection policy on an http listener",
            with_policy("sni-router", ""),
        ),
        case(
            "policies past the engine's pool",
            with_policy("path-router", ROUTES).replace(
                "[policies]\n",
                "[policies]\ntotal_instances = 2\ntotal_memories = 2\ntotal_stacks = 2\n",
            ),
        ),
        case(
            "a policy over max_wasm_bytes",
            with_policy("path-router", ROUTES)
                .replace("[policies]\n", "[policies]\nmax_wasm_bytes = 1000\n"),
        ),
        case(
            "a tls pool with a missing CA",
            format!(
                "{POOL}[pools.secure]\nbackends = [\"127.0.0.1:9443\"]\ntls = true\nca = \"missing-ca.pem\"\n"
            ),
        ),
        case(
            "a listener certificate that is missing",
            http("[listeners.a.tls]\ncerts = [{ cert = \"a.pem\", key = \"a.key\" }]\n"),
        ),
        case(
            "a listener certificate that is not one",
            http("[listeners.a.tls]\ncerts = [{ cert = \"junk.pem\", key = \"junk.pem\" }]\n"),
        ),
    ];
    cases.push(Case {
        name: "a policy that is not WebAssembly",
        toml: with_policy("garbage", ""),
        files: vec![("policies/garbage.wasm", b"not wasm at all".to_vec())],
    });
    cases.push(Case {
        name: "a core module, not a component",
        toml: with_policy("core", ""),
        files: vec![("policies/core.wasm", b"\0asm\x01\0\0\0".to_vec())],
    });
    for c in &mut cases {
        c.files.push((
            "policies/bad.json",
            br#"{"routes": [{"prefix": "api", "pool": "web"}]}"#.to_vec(),
        ));
        c.files.push(("junk.pem", b"no certificate here".to_vec()));
        c.files.push(("policies/routes.json", GOOD_ROUTES.to_vec()));
    }
    cases
}

/// A directory with the configuration, a copy of the built policies and
/// the case's files.
fn lay_out(c: &Case, dir: &Path) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for name in ["path-router", "sni-router"] {
        let built = repo().join(format!("policies/{name}.wasm"));
        assert!(
            built.is_file(),
            "{} is missing: run `cargo xtask build-policies` first",
            built.display()
        );
        std::fs::copy(&built, policies.join(format!("{name}.wasm"))).unwrap();
    }
    for (name, bytes) in &c.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let cfg = dir.join("switchyard.toml");
    // Relative paths in the file are relative to it.
    std::fs::write(
        &cfg,
        c.toml.replace(
            "dir = \"policies\"",
            &format!("dir = {:?}", policies.display().to_string()),
        ),
    )
    .unwrap();
    cfg
}

/// What `check` says, and what `run` says: `None` when accepted.
async fn both(cfg: &Path) -> (Option<String>, Option<String>) {
    let check = switchyard::cli::check(cfg)
        .await
        .err()
        .map(|p| p.join("\n"));
    let run = match switchyard::config::Config::load(cfg) {
        Err(e) => Some(e.to_string()),
        Ok(config) => match switchyard::daemon::start(config).await {
            Err(e) => Some(e.to_string()),
            Ok(running) => {
                running
                    .shutdown(std::time::Duration::from_millis(100))
                    .await;
                None
            }
        },
    };
    (check, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_refuse_the_same_broken_configurations() {
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let root = std::env::temp_dir().join(format!("switchyard-plan-{}", std::process::id()));
    let mut differ = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let dir = root.join(i.to_string());
        let cfg = lay_out(c, &dir);
        let (check, run) = both(&cfg).await;
        match (&check, &run) {
            (Some(a), Some(b)) if a == b => {
                eprintln!("{}: {}", c.name, a.lines().next().unwrap_or_default())
            }
            _ => differ.push(format!("{}:\n  check: {check:?}\n  run:   {run:?}", c.name)),
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        differ.is_empty(),
        "check and run differ:\n{}",
        differ.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_accept_a_good_configuration() {
    let dir = std::env::temp_dir().join(format!("switchyard-plan-good-{}", std::process::id()));
    let good = Case {
        name: "good",
        toml: with_policy("path-router", ROUTES),
        files: vec![("policies/routes.json", GOOD_ROUTES.to_vec())],
    };
    let cfg = lay_out(&good, &dir);
    let (check, run) = both(&cfg).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((check, run), (None, None), "{}", good.name);
}
