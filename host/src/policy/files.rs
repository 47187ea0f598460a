//! Reading what an operator (or anyone who can write to it) put in the
//! policy directory, and checking the compile cache's directory: both are
//! inputs from the file system that must not reach outside where they
//! belong, block a reload, or plant code.

use std::path::{Path, PathBuf};

use super::LoadError;
pub use crate::config::limits::FileCaps;

/// Reads a policy file and its config: `config_path` when given (a path
/// the operator wrote in the configuration), else the `.json` beside the
/// `.wasm` when it exists, else an empty config.
///
/// Files found in the policy directory `dir` must resolve, symlinks
/// followed, to a regular file beneath `dir`: a symlink to another file
/// of the directory (as Kubernetes' ConfigMap volumes make) is fine, one
/// to `/etc/ssl/private/key.pem` or `/dev/zero` is refused and named, and
/// so is a FIFO, without waiting on it. Every file must be within its size cap, checked on
/// the open file before a byte is read. Blocking: call it through
/// [`read_policy_files_async`] from async code.
pub fn read_policy_files(
    dir: &Path,
    wasm_path: &Path,
    config_path: Option<&Path>,
    caps: FileCaps,
) -> Result<(Vec<u8>, String), LoadError> {
    let wasm = read_capped(wasm_path, Some(dir), caps.wasm, "max_wasm_bytes")?;
    let default_config = wasm_path.with_extension("json");
    let config = match config_path {
        Some(path) => read_capped(path, None, caps.config, "max_config_bytes")?,
        None => match std::fs::symlink_metadata(&default_config) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            _ => read_capped(&default_config, Some(dir), caps.config, "max_config_bytes")?,
        },
    };
    let config = String::from_utf8(config).map_err(|_| LoadError {
        file: config_path.unwrap_or(&default_config).to_path_buf(),
        reason: "is not UTF-8".into(),
    })?;
    Ok((wasm, config))
}

/// [`read_policy_files`] on a blocking thread.
pub async fn read_policy_files_async(
    dir: PathBuf,
    wasm_path: PathBuf,
    config_path: Option<PathBuf>,
    caps: FileCaps,
) -> Result<(Vec<u8>, String), LoadError> {
    let file = wasm_path.clone();
    tokio::task::spawn_blocking(move || {
        read_policy_files(&dir, &wasm_path, config_path.as_deref(), caps)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoadError {
            file,
            reason: format!("read task failed: {e}"),
        })
    })
}

/// Opens `path` for reading without waiting (a FIFO must not hang the
/// reload), and when `dir` is given, only if it resolves beneath `dir`:
/// `openat2(RESOLVE_BENEATH)` on the directory's handle, so the kernel
/// follows the symlinks inside and refuses a way out, with no window
/// between a check and the open. Kernels before 5.6 fall back to
/// resolving the path, checking it, and opening the result without
/// following a final symlink.
fn open_beneath(path: &Path, dir: Option<&Path>) -> Result<std::fs::File, String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let outside = |root: &Path| {
        let resolved = path
            .canonicalize()
            .map_or_else(|_| "a path".to_owned(), |p| p.display().to_string());
        format!(
            "resolves to {resolved}, outside the policy directory {}: refused",
            root.display()
        )
    };
    let Some(dir) = dir else {
        return rustix::fs::open(path, flags, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|e| format!("cannot read: {e}"));
    };
    let name = path
        .strip_prefix(dir)
        .map_err(|_| format!("is not in the policy directory {}", dir.display()))?;
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        format!(
            "the policy directory {} cannot be opened: {e}",
            dir.display()
        )
    })?;
    match rustix::fs::openat2(
        &root,
        name,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(fd.into()),
        Err(rustix::io::Errno::XDEV) => Err(outside(dir)),
        Err(rustix::io::Errno::NOSYS) => {
            let root = dir
                .canonicalize()
                .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
            let resolved = path
                .canonicalize()
                .map_err(|e| format!("cannot read: {e}"))?;
            if !resolved.starts_with(&root) {
                return Err(outside(&root));
            }
            rustix::fs::open(&resolved, flags | OFlags::NOFOLLOW, Mode::empty())
                .map(std::fs::File::from)
                .map_err(|e| format!("cannot read: {e}"))
        }
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// Reads `path`, a regular file of at most `cap` bytes that resolves
/// beneath `dir` when one is given.
fn read_capped(path: &Path, dir: Option<&Path>, cap: u64, key: &str) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let err = |reason: String| LoadError {
        file: path.to_path_buf(),
        reason,
    };
    let mut f = open_beneath(path, dir).map_err(err)?;
    let meta = f.metadata().map_err(|e| err(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(err("is not a regular file: refused".into()));
    }
    if meta.len() > cap {
        return Err(err(format!(
            "is {} bytes, over policies.{key} = {cap}: refused without reading it",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut f)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(err(format!(
            "grew past policies.{key} = {cap} while read: refused"
        )));
    }
    Ok(bytes)
}

/// Makes `dir` (mode 0700) when it is missing, then checks that it is a
/// directory (not a symlink) that belongs to the user running the daemon
/// and that neither group nor others may write: wasmtime runs the native
/// code it finds in its cache without checking where it came from.
pub fn own_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat it: {e}"))?;
    if meta.file_type().is_symlink() {
        return Err("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it belongs to uid {}, and the daemon runs as uid {me}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "group or others may write to it (mode {:o}); chmod go-w it",
            mode & 0o777
        ));
    }
    Ok(())
}
