//! The status page (`GET /` on the admin listener) and its data,
//! `GET /api/status`.
//!
//! The page is three static files embedded in the binary (`status/`):
//! plain JS that reads `/api/status` every 2 s. Its numbers are read from
//! the same exposition `/metrics` serves, so the two always agree; what
//! `/metrics` has no series for (health, drain, ejections, policy
//! versions, recent reloads) comes from the same state `/api/pools` and
//! `/api/policies` read. Every 2 s a sampler keeps the counters it needs,
//! for the last 5 minutes: rates and sparklines are differences of those.
//! Nothing is added to the request path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Metrics, View};

/// How often the sampler reads the counters.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: 5 minutes of intervals, and the one before them.
const KEPT: usize = 151;

pub const HTML: &str = include_str!("status/index.html");
pub const JS: &str = include_str!("status/status.js");
pub const CSS: &str = include_str!("status/status.css");

/// Renders `/metrics`. One render at a time: rendering clears and refills
/// the backend gauges, and a scrape must not see them half refilled.
pub fn render(view: &View, metrics: &Metrics) -> String {
    static RENDER: Mutex<()> = Mutex::new(());
    let _one = RENDER.lock().unwrap_or_else(|e| e.into_inner());
    metrics.render(&view.upstreams, &view.policies, view.engine.as_deref())
}

/// One series of the exposition: `name{k="v",...} value`.
#[derive(Debug, PartialEq)]
struct Series<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Series<'_> {
    fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Parses one line of the text exposition (comments give `None`). A
/// label value's escapes (`\\`, `\"`, `\n`) are undone.
fn parse_line(line: &str) -> Option<Series<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, mut rest)) = head.split_once('{') else {
        return Some(Series {
            name: head,
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                (i, '"') => break i,
                (_, c) => v.push(c),
            }
        };
        labels.push((key.trim_start_matches(','), v));
        rest = &after[end + 1..];
    }
    (rest == "}").then_some(Series {
        name,
        labels,
        value,
    })
}

/// What one backend has seen, summed over listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    /// HTTP requests answered, TCP connections and UDP flows.
    requests: f64,
    /// HTTP answers of class 5xx.
    server_errors: f64,
    /// Failures reaching it (`switchyard_upstream_connect_errors_total`).
    connect_errors: f64,
}

/// The counters the page needs, read from one exposition.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: Option<Instant>,
    /// By listener: requests (HTTP) or connections and flows (L4).
    listeners: HashMap<String, f64>,
    connections: HashMap<String, f64>,
    /// By (pool, backend).
    backends: HashMap<(String, String), Counts>,
    /// By pool: the latency histogram's cumulative buckets (le, count).
    latency: HashMap<String, BTreeMap<u64, f64>>,
    /// By policy: calls by outcome.
    policies: HashMap<String, BTreeMap<String, f64>>,
}

/// A bucket bound in nanoseconds, so buckets sort and compare exactly.
fn le_ns(le: &str) -> u64 {
    le.parse::<f64>()
        .map_or(u64::MAX, |s| (s * 1e9).round() as u64)
}

fn digest(text: &str) -> Sample {
    let mut s = Sample::default();
    for series in text.lines().filter_map(parse_line) {
        let backend = || {
            let key = (
                series.label("pool").to_owned(),
                series.label("backend").to_owned(),
            );
            (!key.1.is_empty()).then_some(key)
        };
        let listener = series.label("listener").to_owned();
        match series.name {
            "switchyard_http_requests_total" => {
                *s.listeners.entry(listener).or_default() += series.value;
                if let Some(key) = backend() {
                    let c = s.backends.entry(key).or_default();
                    c.requests += series.value;
                    if series.label("status_class") == "5xx" {
                        c.server_errors += series.value;
                    }
                }
            }
            "switchyard_tcp_connections_total" | "switchyard_udp_flows_total" => {
                *s.listeners.entry(listener).or_default() += series.value;
                if let Some(key) = backend() {
                    s.backends.entry(key).or_default().requests += series.value;
                }
            }
            "switchyard_upstream_connect_errors_total" => {
                if let Some(key) = backend() {
                    s.backends.entry(key).or_default().connect_errors += series.value;
                }
            }
            "switchyard_active_connections" => {
                *s.connections.entry(listener).or_default() += series.value;
            }
            "switchyard_http_request_duration_seconds_bucket" => {
                let pool = s
                    .latency
                    .entry(series.label("pool").to_owned())
                    .or_default();
                *pool.entry(le_ns(series.label("le"))).or_default() += series.value;
            }
            "switchyard_policy_calls_total" => {
                let p = s.policies.entry(series.label("policy").to_owned());
                *p.or_default()
                    .entry(series.label("outcome").to_owned())
                    .or_default() += series.value;
            }
            _ => {}
        }
    }
    s
}

/// The upper bound (ms) of the bucket holding quantile `q` of the
/// requests between two cumulative histograms; `None` without requests.
fn quantile_ms(new: &BTreeMap<u64, f64>, old: Option<&BTreeMap<u64, f64>>, q: f64) -> Option<f64> {
    let count = |le: &u64, n: &f64| n - old.and_then(|o| o.get(le)).copied().unwrap_or(0.0);
    let total = new.iter().map(|(le, n)| count(le, n)).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    new.iter()
        .find(|(le, n)| count(le, n) >= q * total)
        .map(|(le, _)| {
            if *le == u64::MAX {
                f64::INFINITY
            } else {
                *le as f64 / 1e6
            }
        })
}

/// The share of 5xx answers since `old` (the window's start, or ever).
fn window_ratio(now: &Counts, old: Option<&Counts>) -> f64 {
    let old = old.copied().unwrap_or_default();
    let requests = now.requests - old.requests;
    if requests > 0.0 {
        (now.server_errors - old.server_errors) / requests
    } else {
        0.0
    }
}

/// The sampler's history, read by `/api/status`.
#[derive(Default)]
pub struct Status {
    samples: Mutex<VecDeque<Sample>>,
}

impl Status {
    /// Reads the counters once (every [`INTERVAL`], from `admin::serve`).
    pub fn sample(&self, view: &View, metrics: &Metrics) {
        let mut s = digest(&render(view, metrics));
        s.at = Some(Instant::now());
        let mut samples = self.samples.lock().expect("status samples");
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// Per second, between each two samples, of what `f` reads.
    fn rates(samples: &VecDeque<Sample>, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        let pairs = samples.iter().zip(samples.iter().skip(1));
        pairs
            .map(|(a, b)| {
                let secs = match (a.at, b.at) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
                    _ => 0.0,
                };
                if secs > 0.0 {
                    ((f(b) - f(a)) / secs).max(0.0)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Everything the page shows, as of now.
    pub fn snapshot(&self, view: &View, metrics: &Metrics) -> Value {
        let now = digest(&render(view, metrics));
        let samples = self.samples.lock().expect("status samples");
        let oldest = samples.front();
        let listeners = view.protocols.iter().map(|(name, protocol)| {
            let history = Self::rates(&samples, |s| s.listeners.get(name).copied().unwrap_or(0.0));
            json!({
                "name": name,
                "protocol": protocol,
                "address": view.addrs.get(name).map(|a| a.to_string()),
                "connections": now.connections.get(name).copied().unwrap_or(0.0),
                "requests": now.listeners.get(name).copied().unwrap_or(0.0),
                "rate": history.last().copied().unwrap_or(0.0),
                "history": history,
            })
        });
        let pools = view.upstreams.pools().map(|(pool, p)| {
            let latency = now.latency.get(pool.as_str());
            let old = oldest.and_then(|o| o.latency.get(pool.as_str()));
            // Above the last bucket is "+Inf": JSON has no infinity.
            let q = |q| match latency.and_then(|l| quantile_ms(l, old, q)) {
                Some(ms) if ms.is_finite() => json!(ms),
                Some(_) => json!("+Inf"),
                None => Value::Null,
            };
            let backends = p.backends.iter().map(|b| {
                let key = (pool.to_string(), b.name.to_string());
                let counts = now.backends.get(&key).copied().unwrap_or_default();
                let of = |f: fn(&Counts) -> f64| {
                    let key = &key;
                    Self::rates(&samples, move |s| s.backends.get(key).map_or(0.0, f))
                };
                let (requests, errors) = (of(|c| c.requests), of(|c| c.server_errors));
                let error_ratio: Vec<f64> = requests
                    .iter()
                    .zip(&errors)
                    .map(|(r, e)| if *r > 0.0 { e / r } else { 0.0 })
                    .collect();
                json!({
                    "name": &*b.name,
                    "address": b.address().authority,
                    "healthy": b.healthy(),
                    "checks_pass": b.health.checks_pass(),
                    "ejected": b.health.ejected(&b.name),
                    "ejections": b.health.ejections(),
                    "drained": b.drained(),
                    "in_flight": crate::balance::Candidate::in_flight(&**b),
                    "requests": counts.requests,
                    "server_errors": counts.server_errors,
                    "connect_errors": counts.connect_errors,
                    "rate": requests.last().copied().unwrap_or(0.0),
                    "error_ratio": window_ratio(&counts, oldest.and_then(|o| o.backends.get(&key))),
                    "history": requests,
                    "error_history": error_ratio,
                })
            });
            json!({
                "name": pool,
                "algorithm": format!("{:?}", p.config.algorithm),
                "p50_ms": q(0.5),
                "p99_ms": q(0.99),
                "backends": backends.collect::<Vec<_>>(),
            })
        });
        json!({
            "ready": view.ready,
            "interval_s": INTERVAL.as_secs(),
            "window_s": oldest.and_then(|o| o.at).map_or(0, |t| t.elapsed().as_secs()),
            "listeners": listeners.collect::<Vec<_>>(),
            "pools": pools.collect::<Vec<_>>(),
            "policies": policies(view, &now),
            "refused": &view.policy_errors,
            "reloads": metrics.reloads.recent(),
        })
    }
}

fn policies(view: &View, now: &Sample) -> Vec<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    view.policies
        .iter()
        .map(|p| {
            let outcomes = now.policies.get(&*p.name);
            let errors: BTreeMap<&str, f64> = outcomes
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "ok")
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            json!({
                "name": &*p.name,
                "version": p.version,
                "world": p.kind.world(),
                "loaded_at_unix": p.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "calls": outcomes.map_or(0.0, |o| o.values().sum()),
                "errors": errors,
                "overloaded": p.stats.overloaded.load(Relaxed),
                "p99_us_at_most": p.stats.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                "last_refused": view.policy_errors.get(&*p.name),
                "file_missing": view.policies_missing.contains(&*p.name),
                "canary": view.canaries.get(&*p.name).map(|c| c.json()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_with_escapes() {
        let s = parse_line(r#"a_total{x="p\"q",y="a\\b\nc",z=""} 12"#).unwrap();
        assert_eq!(s.name, "a_total");
        assert_eq!(s.value, 12.0);
        assert_eq!(s.label("x"), "p\"q");
        assert_eq!(s.label("y"), "a\\b\nc");
        assert_eq!(s.label("z"), "");
        assert_eq!(parse_line("up 1").unwrap().value, 1.0);
        assert_eq!(parse_line("# TYPE up gauge"), None);
        assert_eq!(parse_line(r#"a{x="unterminated} 1"#), None);
        assert_eq!(parse_line(r#"a{x="1"}} 1"#), None);
    }

    #[test]
    fn counts_sum_over_listeners_and_quantiles_use_the_window() {
        let text = "\
switchyard_http_requests_total{listener=\"a\",pool=\"p\",backend=\"b\",status_class=\"2xx\"} 7
switchyard_http_requests_total{listener=\"c\",pool=\"p\",backend=\"b\",status_class=\"5xx\"} 3
switchyard_http_requests_total{listener=\"a\",pool=\"\",backend=\"\",status_class=\"4xx\"} 2
switchyard_tcp_connections_total{listener=\"t\",pool=\"p\",backend=\"b\"} 5
switchyard_http_request_duration_seconds_bucket{le=\"0.001\",listener=\"a\",pool=\"p\"} 4
switchyard_http_request_duration_seconds_bucket{le=\"0.002\",listener=\"a\",pool=\"p\"} 9
switchyard_http_request_duration_seconds_bucket{le=\"+Inf\",listener=\"a\",pool=\"p\"} 10
# EOF";
        let s = digest(text);
        let c = s.backends[&("p".to_owned(), "b".to_owned())];
        assert_eq!((c.requests, c.server_errors), (15.0, 3.0));
        assert_eq!(s.listeners["a"], 9.0);
        assert_eq!(s.listeners["t"], 5.0);
        let l = &s.latency["p"];
        assert_eq!(quantile_ms(l, None, 0.5), Some(2.0));
        assert_eq!(quantile_ms(l, None, 0.99), Some(f64::INFINITY));
        // Over a window that began after the first 4 (all under 1 ms).
        let old: BTreeMap<u64, f64> = [(1_000_000, 4.0), (2_000_000, 4.0), (u64::MAX, 4.0)].into();
        assert_eq!(quantile_ms(l, Some(&old), 0.5), Some(2.0));
        assert_eq!(quantile_ms(&old, Some(&old), 0.5), None);
    }
}
