//! `switchyard policy test --cases FILE.jsonl`: unit tests for a policy,
//! without a proxy. Each line is one case: a request (with an optional
//! body, upstream response and canned `http-call` answers) and the
//! decision expected, in the JSON `policy test` prints; a field left out
//! of `expect` is not checked. The cases run in order on one loaded
//! policy (its KV store carries over from case to case).
//!
//! ```json
//! {"request": {"method": "GET", "path": "/api/x", "headers": [["host", "a.test"]]},
//!  "expect": {"forward": {"pool": "api"}}}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::Value;

use super::exchange::{self, CannedCalls, Extras, GivenResponse};
use crate::policy::{Directory, Policy};

/// One line of a cases file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Case {
    /// Shown in the table (default: the request line).
    name: Option<String>,
    request: CaseRequest,
    /// The upstream response, for a decision that inspects it.
    response: Option<GivenResponse>,
    /// Canned answers to the policy's `http-call`s, by pool.
    #[serde(default)]
    calls: BTreeMap<String, GivenResponse>,
    /// For a connection policy: the TLS server name the client sent; the
    /// case runs `on-connect` (its `request` gives only the client).
    sni: Option<String>,
    /// The decision expected; without it the case passes when the policy
    /// decides without an error (a captured request, `l7/capture.rs`).
    expect: Option<Value>,
    /// When the request was captured (`policy replay` freezes the clock
    /// there).
    pub(super) at_unix_ms: Option<u64>,
}

impl Case {
    /// As the table names it: its name, else the request line.
    pub(super) fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{} {}", self.request.method, self.request.path))
    }

    /// The client's address (default 127.0.0.1).
    pub(super) fn client(&self) -> &str {
        self.request.client.as_deref().unwrap_or("127.0.0.1")
    }

    /// The request head the policy is handed.
    pub(super) fn view(&self) -> anyhow::Result<Box<crate::policy::RequestView>> {
        let r = &self.request;
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        exchange::request(&r.method, &r.path, &headers)
    }
}

/// Line `n` of `file`: a case, or `None` for a blank or `//` line.
pub(super) fn parse(file: &str, n: usize, line: &str) -> anyhow::Result<Option<Case>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with("//") {
        return Ok(None);
    }
    serde_json::from_str(line)
        .map(Some)
        .with_context(|| format!("{file}:{n}: not a case"))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    /// Name/value pairs, so a field may repeat.
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// The client's IP address (default 127.0.0.1).
    client: Option<String>,
    /// The request body, for a policy that reads it.
    body: Option<String>,
}

fn get() -> String {
    "GET".to_owned()
}

fn root() -> String {
    "/".to_owned()
}

/// Whether `got` has everything `want` says: objects by the keys `want`
/// names, arrays element by element and of the same length, anything
/// else equal.
pub fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| matches(wv, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(wv, gv)| matches(wv, gv))
        }
        _ => want == got,
    }
}

/// Runs every case of `text` (`file` names it in messages) and prints a
/// table; returns how many failed.
pub async fn run(
    policy: &Policy,
    file: &str,
    text: &str,
    pool: Option<&str>,
    directory: &Arc<dyn Directory>,
) -> anyhow::Result<usize> {
    let (mut passed, mut failed) = (0, 0);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(case) = parse(file, n, line)? else {
            continue;
        };
        let label = case.label();
        let expected = case
            .expect
            .as_ref()
            .map_or("a decision".into(), Value::to_string);
        match one(policy, &case, pool, directory).await {
            Ok(got) if case.expect.as_ref().is_none_or(|e| matches(e, &got)) => {
                passed += 1;
                println!("ok    {file}:{n}  {label}");
                if case.expect.is_none() {
                    println!("      decided  {got}");
                }
            }
            Ok(got) => {
                failed += 1;
                println!("FAIL  {file}:{n}  {label}");
                println!("      expected {expected}");
                println!("      got      {got}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {file}:{n}  {label}");
                println!("      expected {expected}");
                println!("      error    {e:#}");
            }
        }
    }
    if passed + failed == 0 {
        bail!("{file}: no cases");
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed)
}

async fn one(
    policy: &Policy,
    case: &Case,
    pool: Option<&str>,
    directory: &Arc<dyn Directory>,
) -> anyhow::Result<Value> {
    let r = &case.request;
    let conn = exchange::connection(case.client(), pool, case.sni.as_deref())?;
    if case.sni.is_some() {
        return Ok(policy.on_connect(&conn, pool, directory).await?.to_json());
    }
    let mut request = case.view()?;
    let directory: Arc<dyn Directory> = Arc::new(CannedCalls {
        inner: directory.clone(),
        calls: case.calls.clone(),
    });
    let extras = Extras {
        body: r.body.as_ref().map(|b| Bytes::from(b.clone())),
        response: case.response.clone(),
    };
    exchange::run(policy, &mut request, &conn, pool, &directory, &extras).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::matches;

    #[test]
    fn a_field_left_out_is_not_checked_and_a_wrong_one_fails() {
        let got = json!({"forward": {"pool": "api", "path": "/x", "request_headers": []}});
        assert!(matches(&json!({"forward": {"pool": "api"}}), &got));
        assert!(matches(&json!({"forward": {}}), &got));
        assert!(!matches(&json!({"forward": {"pool": "web"}}), &got));
        assert!(!matches(&json!({"respond": {}}), &got));
        assert!(!matches(
            &json!({"forward": {"request_headers": [1]}}),
            &got
        ));
        assert!(matches(
            &json!({"forward": {"pool": null}}),
            &json!({"forward": {"pool": null}})
        ));
        assert!(!matches(
            &json!({"forward": {"pool": null}}),
            &json!({"forward": {}})
        ));
    }
}
