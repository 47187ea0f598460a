//! `packaging/switchyard.service` is a unit systemd accepts: `systemd-
//! analyze verify` (from Debian's `systemd`, which `cargo xtask test`
//! installs when missing) checks it with the binary in place, as the
//! package installs it.

use std::path::Path;
use std::process::Command;

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("packaging/switchyard.service")).unwrap();
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
    let dir = std::env::temp_dir().join(format!("switchyard-unit-{}", std::process::id()));
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), bin.join("switchyard")).unwrap();
    let placed = unit.replace(
        "/usr/bin/switchyard",
        &bin.join("switchyard").display().to_string(),
    );
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
    let _ = std::fs::remove_dir_all(&dir);
}
