//! A policy's own metrics, behind the `metrics` host import: defined in
//! `init`, updated from any hook, and exported through one Prometheus
//! collector as `switchyard_policy_<policy>_<name>`. They belong to the
//! policy's name (every instance and version shares them, like its KV
//! namespace) and go when the daemon stops using that name
//! ([`CustomMetrics::forget`]).
//!
//! Every table has a cap: 32 metrics a policy, 8 label names a metric, 100
//! label sets a metric; past the last, updates go to one series whose
//! labels are all `other`, so a policy that labels by client address
//! cannot grow the scrape without bound.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

pub const MAX_METRICS: usize = 32;
pub const MAX_LABEL_NAMES: usize = 8;
pub const MAX_SERIES: usize = 100;
const MAX_NAME_BYTES: usize = 64;

type Labels = Vec<(String, String)>;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn buckets() -> Histogram {
    // 0.001 .. ~65: milliseconds of a backend, bytes of a small body.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
enum Series {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram, fn() -> Histogram>),
}

#[derive(Debug)]
struct Def {
    help: String,
    kind: Kind,
    label_names: Vec<String>,
    series: Series,
    /// The label sets seen, up to [`MAX_SERIES`].
    seen: Mutex<HashSet<Vec<String>>>,
    overflowed: AtomicBool,
}

/// One policy's metrics.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    defs: RwLock<BTreeMap<String, Arc<Def>>>,
}

fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_BYTES
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PolicyMetrics {
    /// Defines `name`, or checks that it is defined the same way.
    pub fn define(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        label_names: Vec<String>,
    ) -> Result<(), String> {
        if !valid_name(name) {
            return Err(format!(
                "metric name {name:?} is not [a-z][a-z0-9_]* of at most {MAX_NAME_BYTES} bytes"
            ));
        }
        if label_names.len() > MAX_LABEL_NAMES {
            return Err(format!("{name}: more than {MAX_LABEL_NAMES} label names"));
        }
        if let Some(l) = label_names.iter().find(|l| !valid_name(l)) {
            return Err(format!("{name}: label name {l:?} is not [a-z][a-z0-9_]*"));
        }
        let mut defs = self.defs.write().expect("policy metrics");
        if let Some(d) = defs.get(name) {
            return if d.kind == kind && d.label_names == label_names && d.help == help {
                Ok(())
            } else {
                Err(format!("{name}: already defined differently"))
            };
        }
        if defs.len() >= MAX_METRICS {
            return Err(format!(
                "{name}: a policy has at most {MAX_METRICS} metrics"
            ));
        }
        let series = match kind {
            Kind::Counter => Series::Counter(Family::default()),
            Kind::Gauge => Series::Gauge(Family::default()),
            Kind::Histogram => Series::Histogram(Family::new_with_constructor(buckets)),
        };
        let def = Def {
            help: help.to_owned(),
            kind,
            label_names,
            series,
            seen: Mutex::new(HashSet::new()),
            overflowed: AtomicBool::new(false),
        };
        defs.insert(name.to_owned(), Arc::new(def));
        Ok(())
    }

    /// The metric and the label set an update goes to, or why none.
    fn series(
        &self,
        name: &str,
        kind: Kind,
        values: Vec<String>,
    ) -> Result<(Arc<Def>, Labels), String> {
        let def = self
            .defs
            .read()
            .expect("policy metrics")
            .get(name)
            .cloned()
            .ok_or_else(|| format!("metric {name:?} is not defined"))?;
        if def.kind != kind {
            return Err(format!("metric {name:?} is a {:?}", def.kind));
        }
        if values.len() != def.label_names.len() {
            return Err(format!(
                "metric {name:?} has {} labels, not {}",
                def.label_names.len(),
                values.len()
            ));
        }
        let values = {
            let mut seen = def.seen.lock().expect("metric label sets");
            if seen.contains(&values) || seen.len() < MAX_SERIES {
                seen.insert(values.clone());
                values
            } else {
                if !def.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(metric = %name,
                        "a policy metric passed {MAX_SERIES} label sets; the rest count as \"other\"");
                }
                vec!["other".to_owned(); values.len()]
            }
        };
        let labels = def.label_names.iter().cloned().zip(values).collect();
        Ok((def, labels))
    }

    pub fn counter_add(&self, name: &str, values: Vec<String>, delta: u64) -> Result<(), String> {
        let (def, labels) = self.series(name, Kind::Counter, values)?;
        if let Series::Counter(f) = &def.series {
            f.get_or_create(&labels).inc_by(delta);
        }
        Ok(())
    }

    pub fn gauge_set(&self, name: &str, values: Vec<String>, value: f64) -> Result<(), String> {
        let (def, labels) = self.series(name, Kind::Gauge, values)?;
        if let Series::Gauge(f) = &def.series {
            f.get_or_create(&labels).set(value);
        }
        Ok(())
    }

    pub fn histogram_observe(
        &self,
        name: &str,
        values: Vec<String>,
        value: f64,
    ) -> Result<(), String> {
        let (def, labels) = self.series(name, Kind::Histogram, values)?;
        if let Series::Histogram(f) = &def.series {
            f.get_or_create(&labels).observe(value);
        }
        Ok(())
    }
}

/// Every policy's metrics, by policy name; the daemon's one collector.
#[derive(Debug, Default)]
pub struct CustomMetrics {
    by_policy: Mutex<BTreeMap<String, Arc<PolicyMetrics>>>,
}

impl CustomMetrics {
    /// The metrics of the policy named `policy`.
    pub fn of(&self, policy: &str) -> Arc<PolicyMetrics> {
        self.by_policy
            .lock()
            .expect("custom metrics")
            .entry(policy.to_owned())
            .or_default()
            .clone()
    }

    /// The policies that have metrics.
    pub fn names(&self) -> Vec<String> {
        self.by_policy
            .lock()
            .expect("custom metrics")
            .keys()
            .cloned()
            .collect()
    }

    /// Drops a policy's metrics: no listener uses it any more.
    pub fn forget(&self, policy: &str) {
        self.by_policy
            .lock()
            .expect("custom metrics")
            .remove(policy);
    }
}

impl Collector for CustomMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all: Vec<(String, Arc<PolicyMetrics>)> = self
            .by_policy
            .lock()
            .expect("custom metrics")
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        for (policy, m) in all {
            let defs: Vec<(String, Arc<Def>)> = m
                .defs
                .read()
                .expect("policy metrics")
                .iter()
                .map(|(n, d)| (n.clone(), d.clone()))
                .collect();
            for (name, def) in defs {
                let full = format!("policy_{}_{name}", policy.replace('-', "_"));
                match &def.series {
                    Series::Counter(f) => f.encode(encoder.encode_descriptor(
                        &full,
                        &def.help,
                        None,
                        f.metric_type(),
                    )?)?,
                    Series::Gauge(f) => f.encode(encoder.encode_descriptor(
                        &full,
                        &def.help,
                        None,
                        f.metric_type(),
                    )?)?,
                    Series::Histogram(f) => f.encode(encoder.encode_descriptor(
                        &full,
                        &def.help,
                        None,
                        f.metric_type(),
                    )?)?,
                }
            }
        }
        Ok(())
    }
}
