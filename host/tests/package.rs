//! The Debian package and its systemd unit. `packaging/switchyard.service`
//! must be a unit systemd accepts, and `cargo xtask package` (cargo-deb)
//! must put the binary, that unit, the configuration (a conffile), the
//! shipped policies and the docs where the unit and the configuration
//! expect them. `cargo xtask test` installs what these need: Debian's
//! `systemd` (for `systemd-analyze verify`) and cargo-deb (into
//! `target/tools`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `systemd-analyze verify` of `unit` (text) with the binary it starts at
/// `bin`: the unit's `/usr/bin/switchyard` is rewritten to it.
fn verify(unit: &str, bin: &Path, dir: &Path) {
    let placed = unit.replace("/usr/bin/switchyard", &bin.display().to_string());
    let path = dir.join("switchyard.service");
    std::fs::write(&path, placed).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (cargo xtask test installs Debian's systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned: {said}"
    );
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("packaging/switchyard.service")).unwrap();
    for required in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CacheDirectory=switchyard",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(required), "the unit lacks {required}");
    }
    // wasmtime makes freshly compiled code executable: never W^X here.
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("MemoryDenyWriteExecute"))
    );
    let dir = scratch("unit");
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), bin.join("switchyard")).unwrap();
    verify(&unit, &bin.join("switchyard"), &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// cargo-deb as `cargo xtask test` installs it.
fn cargo_deb() -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .ancestors()
        .nth(2)
        .expect("the binary is in TARGET/PROFILE/")
        .to_path_buf();
    let exe = target.join("tools/bin/cargo-deb");
    assert!(
        exe.is_file(),
        "{} is missing: `cargo xtask test` installs cargo-deb there",
        exe.display()
    );
    exe
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package, made by cargo-deb from the binary this test run built
/// (the dev profile: `cargo xtask package` makes the release one), then
/// unpacked as dpkg would.
#[test]
fn the_package_holds_the_binary_unit_conffile_policies_and_docs() {
    let dir = scratch("deb");
    run(Command::new(cargo_deb())
        .current_dir(repo())
        .args(["-p", "switchyard", "--no-build", "--profile", "dev"])
        .args(["--no-strip", "--fast", "--offline", "-q", "-o"])
        .arg(&dir));
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo-deb made a .deb");
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let bin = root.join("usr/bin/switchyard");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bin).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    let unit = read(&root.join("usr/lib/systemd/system/switchyard.service"));
    assert_eq!(unit, read(&repo().join("packaging/switchyard.service")));
    let config = read(&root.join("etc/switchyard/switchyard.toml"));
    assert_eq!(config, read(&repo().join("packaging/switchyard.toml")));
    assert_eq!(
        read(&control.join("conffiles")).trim(),
        "/etc/switchyard/switchyard.toml"
    );
    // Enabled and started on install, as Debian's nginx and haproxy are.
    let postinst = read(&control.join("postinst"));
    assert!(postinst.contains("deb-systemd-helper enable switchyard.service"));
    assert!(read(&control.join("control")).contains("Package: switchyard"));
    let policies = root.join("usr/share/switchyard/policies");
    // The policy dir is a real directory, not a symlink.
    assert!(std::fs::symlink_metadata(&policies).unwrap().is_dir());
    for shipped in [
        "path-router.wasm",
        "path-router.json",
        "rate-limit.wasm",
        "jwt-auth.wasm",
    ] {
        assert!(policies.join(shipped).is_file(), "{shipped} is not shipped");
    }
    let docs = root.join("usr/share/doc/switchyard");
    for doc in [
        "README.md",
        "copyright",
        "docs/CONFIG.md",
        "docs/OPERATIONS.md",
        "docs/SECURITY.md",
    ] {
        assert!(docs.join(doc).is_file(), "{doc} is not shipped");
    }

    // The shipped configuration, with the shipped policies, passes the
    // unpacked binary's check (paths moved into the unpacked tree).
    let moved = config.replace(
        "/usr/share/switchyard",
        &root.join("usr/share/switchyard").display().to_string(),
    );
    let moved_path = dir.join("switchyard.toml");
    std::fs::write(&moved_path, moved).unwrap();
    run(Command::new(&bin)
        .arg("check")
        .arg("--config")
        .arg(&moved_path));
    // The unit systemd would load, starting the unpacked binary.
    verify(&unit, &bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
