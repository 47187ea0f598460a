//! Build chores, run as `cargo xtask <task>`:
//!
//! - `build-policies [--all-languages]`: build every Rust policy in
//!   `guest-examples/` for `wasm32-wasip2` into `policies/<name>.wasm`, and
//!   the test fixtures in `tests/fixtures/` into `tests/fixtures/wasm/`;
//!   with `--all-languages`, also install the Python, JavaScript and C
//!   toolchains and build `path-router` in each (`languages.rs`);
//! - `test`: build-policies (the other languages too when their toolchains
//!   are present, and always under CI, where they are installed first),
//!   then `cargo fmt --check`, `cargo clippy -D warnings` and `cargo test
//!   --workspace` — what CI runs;
//! - `demo`: build the policies and the release binaries, start three demo
//!   backends and run the daemon on `examples/demo.toml` until Ctrl-C;
//! - `demo-cluster`: the same backends, a redis-server, three L7 instances
//!   and an L4 tier in front (`examples/cluster/`, docs/SCALING.md);
//! - `package`: the policies, the release binary, and a Debian package of
//!   them with the systemd unit and the configuration, made by cargo-deb
//!   (`host/Cargo.toml`'s `[package.metadata.deb]`) into `target/debian/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod languages;

const WASM_TARGET: &str = "wasm32-wasip2";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

fn ensure_components() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("cannot run rustup")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    for c in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

/// The policy crates of a guest workspace: every folder with a Cargo.toml
/// that builds a `cdylib`.
fn policy_crates(workspace: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace)? {
        let dir = entry?.path();
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file() && std::fs::read_to_string(&manifest)?.contains("cdylib") {
            names.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds one guest workspace and copies each policy to `out/<name>.wasm`.
fn build_guest_workspace(workspace: &Path, out: &Path) -> anyhow::Result<Vec<String>> {
    let target = target_dir();
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target))?;
    std::fs::create_dir_all(out)?;
    let names = policy_crates(workspace)?;
    for name in &names {
        let artifact = target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = out.join(format!("{name}.wasm"));
        // Write beside and rename, so a watching daemon never sees half a file.
        let tmp = out.join(format!(".{name}.wasm.tmp"));
        std::fs::copy(&artifact, &tmp)
            .with_context(|| format!("copy {} to {}", artifact.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(names)
}

fn build_policies() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let root = root();
    let built = build_guest_workspace(&root.join("guest-examples"), &root.join("policies"))?;
    eprintln!("xtask: policies/: {}", built.join(", "));
    let fixtures = root.join("tests/fixtures");
    let built = build_guest_workspace(&fixtures, &fixtures.join("wasm"))?;
    eprintln!("xtask: tests/fixtures/wasm/: {}", built.join(", "));
    Ok(())
}

/// Builds path-router in the other languages; returns the ones built. With
/// `install`, missing toolchains are installed; without, they are skipped
/// and said so.
fn build_languages(install: bool) -> anyhow::Result<Vec<&'static str>> {
    let mut built = Vec::new();
    for lang in languages::ALL {
        match languages::build(lang, install)
            .with_context(|| format!("building path-router in {}", lang.name()))?
        {
            languages::Outcome::Built => {
                eprintln!("xtask: {}: built {}", lang.name(), lang.output().display());
                built.push(lang.name());
            }
            languages::Outcome::UpToDate => {
                eprintln!(
                    "xtask: {}: {} is up to date",
                    lang.name(),
                    lang.output().display()
                );
                built.push(lang.name());
            }
            languages::Outcome::Skipped(why) => {
                eprintln!("xtask: {}: SKIPPED: {why}", lang.name());
            }
        }
    }
    Ok(built)
}

fn test() -> anyhow::Result<()> {
    ensure_components()?;
    ensure_services()?;
    cargo_deb()?;
    build_policies()?;
    // CI runs all four languages; elsewhere, those whose toolchains are here.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let langs = build_languages(ci)?;
    let root = root();
    run(cargo().args(["fmt", "--all", "--check"]))?;
    for ws in ["guest-examples", "tests/fixtures"] {
        run(cargo()
            .args(["fmt", "--all", "--check", "--manifest-path"])
            .arg(root.join(ws).join("Cargo.toml")))?;
    }
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args([
            "clippy",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(root.join("guest-examples/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir())
        .args(["--", "-D", "warnings"]))?;
    // The language tests check exactly the languages built here.
    run(cargo()
        .args(["test", "--workspace"])
        .env("SWITCHYARD_LANGS", langs.join(",")))?;
    Ok(())
}

/// What the tests need from Debian's packages: `redis-server` (the shared
/// KV store, `tests/tests/kv.rs` and the multi-instance test), `systemd`
/// for `systemd-analyze verify` of the unit file, and `chromium` with
/// `chromium-driver` for the status page's browser test.
fn ensure_services() -> anyhow::Result<()> {
    if !Path::new("/usr/bin/chromedriver").is_file() || !Path::new("/usr/bin/chromium").is_file() {
        eprintln!("xtask: installing chromium and chromium-driver (apt)");
        languages::apt_install(&["chromium", "chromium-driver"])?;
    }
    if !std::path::Path::new("/usr/bin/redis-server").is_file() {
        eprintln!("xtask: installing redis-server (apt)");
        languages::apt_install(&["redis-server"])?;
    }
    if !std::path::Path::new("/usr/bin/systemd-analyze").is_file() {
        eprintln!("xtask: installing systemd, for systemd-analyze (apt)");
        languages::apt_install(&["systemd"])?;
    }
    Ok(())
}

/// The cargo-deb that `package` and `host/tests/package.rs` run, pinned
/// and installed into `target/tools` when missing.
const CARGO_DEB: &str = "cargo-deb@3.8.0";

fn cargo_deb() -> anyhow::Result<PathBuf> {
    let tools = target_dir().join("tools");
    let exe = tools.join("bin/cargo-deb");
    if !exe.is_file() {
        eprintln!("xtask: installing {CARGO_DEB} into {}", tools.display());
        run(cargo()
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&tools)
            .arg(CARGO_DEB))?;
    }
    Ok(exe)
}

/// `cargo xtask package`: `target/debian/switchyard_VERSION_ARCH.deb`.
fn package() -> anyhow::Result<()> {
    build_policies()?;
    let exe = cargo_deb()?;
    run(Command::new(exe)
        .current_dir(root())
        .args(["-p", "switchyard", "--locked", "--strip"]))?;
    eprintln!(
        "xtask: the package is in {}; install it with `apt install ./target/debian/switchyard_*.deb`",
        target_dir().join("debian").display()
    );
    Ok(())
}

/// `examples/cluster/`: the demo backends, a redis-server on
/// 127.0.0.1:6390, three L7 instances on 127.0.0.41-43 and the L4 tier on
/// 127.0.0.1:8080-8081, until Ctrl-C (which stops them all).
fn demo_cluster() -> anyhow::Result<()> {
    ensure_services()?;
    build_policies()?;
    run(cargo().args(["build", "--release", "-p", "switchyard", "-p", "sy-backend"]))?;
    let bin = target_dir().join("release");
    let quiet = || std::process::Stdio::null();
    let mut children = Children(Vec::new());
    for (name, addr) in DEMO_BACKENDS {
        children.0.push(
            Command::new(bin.join("sy-backend"))
                .args(["--bind", addr, "--name", name, "--show-path"])
                .stdout(quiet())
                .spawn()
                .context("start a demo backend")?,
        );
    }
    children.0.push(
        Command::new("redis-server")
            .args(["--port", "6390", "--bind", "127.0.0.1", "--save", ""])
            .stdout(quiet())
            .spawn()
            .context("start redis-server")?,
    );
    let dir = root().join("examples/cluster");
    for i in 1..=3 {
        children.0.push(
            Command::new(bin.join("switchyard"))
                .args(["run", "--config"])
                .arg(dir.join(format!("instance-{i}.toml")))
                .spawn()
                .context("start an L7 instance")?,
        );
    }
    let mut front = Command::new(bin.join("switchyard"))
        .args(["run", "--config"])
        .arg(dir.join("front.toml"))
        .spawn()
        .context("start the L4 tier")?;
    eprintln!(
        "\nxtask: backends on 127.0.0.1:9001-9003, redis on 127.0.0.1:6390, L7 instances on\n\
         127.0.0.41-43 (traffic 8080/8081, admin 9090), the L4 tier on 127.0.0.1:8080-8081.\n\
         Try:\n  \
         for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' 127.0.0.1:8080/; done\n    \
         # about 20 pass (one burst for all three instances), then 429\n  \
         curl -H 'x-user: ada' 127.0.0.41:8081/; curl -H 'x-user: ada' 127.0.0.42:8081/\n    \
         # every instance picks the same backend\n  \
         curl -s 127.0.0.41:9090/metrics | grep switchyard_kv\n\
         Ctrl-C stops everything.\n"
    );
    let status = front.wait()?;
    drop(children);
    if !status.success() {
        bail!("switchyard exited with {status}");
    }
    Ok(())
}

/// The demo backends: name and address, as in `examples/demo.toml`.
const DEMO_BACKENDS: [(&str, &str); 3] = [
    ("web", "127.0.0.1:9001"),
    ("api", "127.0.0.1:9002"),
    ("images", "127.0.0.1:9003"),
];

/// Kills the demo's child processes (by PID) when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn demo(extra: &[String]) -> anyhow::Result<()> {
    build_policies()?;
    run(cargo().args(["build", "--release", "-p", "switchyard", "-p", "sy-backend"]))?;
    let bin = target_dir().join("release");
    let mut children = Children(Vec::new());
    for (name, addr) in DEMO_BACKENDS {
        children.0.push(
            Command::new(bin.join("sy-backend"))
                .args(["--bind", addr, "--name", name, "--show-path"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("start a demo backend")?,
        );
    }
    let config = root().join("examples/demo.toml");
    let mut daemon = Command::new(bin.join("switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .args(extra)
        .spawn()
        .context("start switchyard")?;
    eprintln!(
        "\nxtask: demo backends web, api, images on 127.0.0.1:9001-9003; switchyard on 127.0.0.1:8080.\n\
         Try:\n  curl http://127.0.0.1:8080/api/x      # api saw /api/x\n  \
         curl http://127.0.0.1:8080/images/y   # images saw /y (path-router strips /images)\n  \
         curl http://127.0.0.1:8080/           # web saw /\n  \
         curl --http2-prior-knowledge http://127.0.0.1:8080/api/h2\n\
         The status page: http://127.0.0.1:9900/  (JSON: /api/status, /api/pools; Prometheus: /metrics)\n\
         Ctrl-C stops everything.\n"
    );
    let status = daemon.wait()?;
    drop(children);
    if !status.success() {
        bail!("switchyard exited with {status}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-policies") => {
            build_policies()?;
            if args.iter().any(|a| a == "--all-languages") {
                build_languages(true)?;
            }
            Ok(())
        }
        Some("test") => test(),
        Some("demo") => demo(&args[1..]),
        Some("demo-cluster") => demo_cluster(),
        Some("package") => package(),
        _ => {
            eprintln!(
                "usage: cargo xtask <build-policies [--all-languages] | test | demo | demo-cluster | package>"
            );
            std::process::exit(2);
        }
    }
}
