//! `[policies.rollout.NAME]`: a new version of policy NAME starts as a
//! canary that decides a share of the requests, and serves everything
//! only once it has proved itself (docs/OPERATIONS.md, "Rolling out a
//! policy"; `policy/rollout.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    #[serde(default = "default_canary_percent")]
    pub canary_percent: u32,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_max_duration_s")]
    pub max_duration_s: u64,
    #[serde(default = "default_max_error_ratio")]
    pub max_error_ratio: f64,
    #[serde(default = "default_min_errors")]
    pub min_errors: u64,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default = "default_redact")]
    pub redact: Vec<String>,
}

fn default_redact() -> Vec<String> {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .map(String::from)
    .to_vec()
}

fn default_canary_percent() -> u32 {
    5
}
fn default_min_requests() -> u64 {
    500
}
fn default_max_duration_s() -> u64 {
    300
}
fn default_max_error_ratio() -> f64 {
    2.0
}
fn default_min_errors() -> u64 {
    5
}

/// One policy's rollout, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The share of clients (by the stable hash of their address) whose
    /// requests the canary decides, 1..=99.
    pub canary_percent: u32,
    /// Requests the canary decides before it can be promoted.
    pub min_requests: u64,
    /// Without `min_requests` by then, the canary is rolled back.
    pub max_duration: Duration,
    /// A canary's error rate (policy errors, or upstream 5xx) may be at
    /// most this many times the current version's (with a floor).
    pub max_error_ratio: f64,
    /// Errors of one kind a canary must have before that rate rolls it
    /// back.
    pub min_errors: u64,
    /// The new version runs after the serving one on the same requests,
    /// and its decisions are only compared, never acted on.
    pub shadow: bool,
    /// Header names whose values the shadow's sample of differences hides.
    pub redact: Vec<http::HeaderName>,
}

/// A listener's `capture = { file, sample, redact }`: sampled request
/// heads written as `policy test --cases` lines, for `policy replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFile {
    pub file: PathBuf,
    #[serde(default = "default_sample")]
    pub sample: f64,
    #[serde(default = "default_capture_redact")]
    pub redact: Vec<String>,
}

fn default_sample() -> f64 {
    0.01
}

fn default_capture_redact() -> Vec<String> {
    ["authorization", "proxy-authorization", "cookie"]
        .map(String::from)
        .to_vec()
}

/// A capture, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub file: PathBuf,
    /// The share of requests written, in (0, 1].
    pub sample: f64,
    /// Headers whose values are written as `[redacted]`.
    pub redact: Vec<http::HeaderName>,
}

/// `listeners.NAME.capture`, checked; the file resolved against `base`.
pub(super) fn capture(
    key: &str,
    f: &Option<CaptureFile>,
    base: &std::path::Path,
    problems: &mut Problems,
) -> Option<Capture> {
    let f = f.as_ref()?;
    if !(f.sample > 0.0 && f.sample <= 1.0) {
        problems.push(format!(
            "{key}.capture.sample: must be above 0 and at most 1"
        ));
    }
    let redact = header_names(&format!("{key}.capture.redact"), &f.redact, problems);
    Some(Capture {
        file: base.join(&f.file),
        sample: f.sample,
        redact,
    })
}

fn header_names(key: &str, names: &[String], problems: &mut Problems) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for (i, h) in names.iter().enumerate() {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => out.push(n),
            Err(_) => problems.push(format!("{key}[{i}]: {h:?} is not a header name")),
        }
    }
    out
}

/// `[policies.rollout]`, checked; `state_dir` is where the last good
/// version and refused digests are kept (required with any rollout).
pub(super) fn rollouts(
    files: BTreeMap<String, RolloutFile>,
    state_dir: &Option<PathBuf>,
    problems: &mut Problems,
) -> BTreeMap<String, Rollout> {
    if !files.is_empty() && state_dir.is_none() {
        problems.push(
            "policies.rollout: needs policies.state_dir (or systemd's StateDirectory=), where \
             the last good version is kept so that a restart after a rollback serves it"
                .into(),
        );
    }
    let mut out = BTreeMap::new();
    for (name, f) in files {
        let key = |k: &str| format!("policies.rollout.{name}.{k}");
        if !(1..=99).contains(&f.canary_percent) {
            problems.push(format!(
                "{}: must be between 1 and 99",
                key("canary_percent")
            ));
        }
        if f.min_requests == 0 {
            problems.push(format!("{}: must be at least 1", key("min_requests")));
        }
        if !(1..=86_400).contains(&f.max_duration_s) {
            problems.push(format!(
                "{}: must be between 1 and 86400",
                key("max_duration_s")
            ));
        }
        if !f.max_error_ratio.is_finite() || f.max_error_ratio < 1.0 {
            problems.push(format!(
                "{}: must be a number of at least 1.0",
                key("max_error_ratio")
            ));
        }
        if f.min_errors == 0 {
            problems.push(format!("{}: must be at least 1", key("min_errors")));
        }
        let redact = header_names(&key("redact"), &f.redact, problems);
        out.insert(
            name,
            Rollout {
                canary_percent: f.canary_percent,
                min_requests: f.min_requests,
                max_duration: Duration::from_secs(f.max_duration_s),
                max_error_ratio: f.max_error_ratio,
                min_errors: f.min_errors,
                shadow: f.shadow,
                redact,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn problems(text: &str) -> String {
        match Config::parse(Path::new("/etc/sy.toml"), text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = "[pools.web]\nbackends = [\"127.0.0.1:9001\"]\n\
        [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"m\"\n\
        [listeners.t]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"c\"\n";

    #[test]
    fn a_rollout_is_checked_key_by_key() {
        let ok = format!("{BASE}[policies]\nstate_dir = \"/var/lib/sy\"\n[policies.rollout.m]\n");
        let c = Config::parse(Path::new("/etc/sy.toml"), &ok).unwrap();
        let r = &c.policies.rollout["m"];
        assert_eq!(
            (r.canary_percent, r.min_requests, r.min_errors),
            (5, 500, 5)
        );
        assert_eq!(
            c.policies.state_dir.as_deref(),
            Some(Path::new("/var/lib/sy"))
        );
        let bad = format!(
            "{BASE}[policies]\nstate_dir = \"/var/lib/sy\"\n\
             [policies.rollout.m]\ncanary_percent = 100\nmin_requests = 0\nmax_error_ratio = 0.5\n\
             [policies.rollout.c]\n[policies.rollout.nobody]\n"
        );
        let said = problems(&bad);
        for expected in [
            "policies.rollout.m.canary_percent: must be between 1 and 99",
            "policies.rollout.m.min_requests: must be at least 1",
            "policies.rollout.m.max_error_ratio: must be a number of at least 1.0",
            "policies.rollout.c: only an HTTP listener's policy can be rolled out",
            "policies.rollout.nobody: no listener runs a policy named \"nobody\"",
        ] {
            assert!(said.contains(expected), "{expected:?} not in {said}");
        }
        if std::env::var_os("STATE_DIRECTORY").is_none() {
            let no_dir = format!("{BASE}[policies.rollout.m]\n");
            assert!(problems(&no_dir).contains("policies.rollout: needs policies.state_dir"));
        }
    }
}
