//! `[pools.NAME]` checked into a [`PoolConfig`]: backends, TLS toward
//! them, the hash key, health checks and outlier ejection. The rule for
//! numbers is `validate.rs`'s.

use std::path::Path;
use std::time::Duration;

use super::file::{self, BackendFile, HealthFile, OutlierFile, PoolFile};
use super::validate::{Problems, at_least, ms};
use super::{
    Algorithm, BackendAddress, BackendConfig, CertFile, HashKey, HealthCheck, Outlier, PoolConfig,
    PoolTls, Retry,
};

pub(super) fn pool(name: &str, pool: PoolFile, base: &Path, problems: &mut Problems) -> PoolConfig {
    let key = format!("pools.{name}");
    let k = |sub: &str| format!("{key}.{sub}");
    if pool.total_timeout_ms == Some(0) {
        problems.push(k("total_timeout_ms: must be at least 1"));
    }
    if pool.retry_budget_percent > 100 {
        problems.push(k("retry_budget_percent: must be between 0 and 100"));
    }
    if pool.hash_key.is_some() && pool.algorithm != Algorithm::Hash {
        problems.push(k("hash_key: only used with algorithm = \"hash\""));
    }
    let tls = pool_tls(&key, &pool, base, problems);
    PoolConfig {
        algorithm: pool.algorithm,
        backends: backends(&key, pool.backends, problems),
        connect_timeout: ms(problems, &k("connect_timeout_ms"), pool.connect_timeout_ms),
        http2: pool.http2,
        hash_key: hash_key(&key, pool.hash_key.as_deref(), problems),
        response_timeout: ms(
            problems,
            &k("response_timeout_ms"),
            pool.response_timeout_ms,
        ),
        idle_timeout: ms(problems, &k("idle_timeout_ms"), pool.idle_timeout_ms),
        max_requests_per_backend: pool.max_requests_per_backend,
        max_connections_per_backend: at_least(
            problems,
            &k("max_connections_per_backend"),
            pool.max_connections_per_backend,
            1,
        ),
        max_idle_per_backend: pool.max_idle_per_backend,
        resolve_interval: Duration::from_millis(at_least(
            problems,
            &k("resolve_interval_ms"),
            pool.resolve_interval_ms,
            100,
        )),
        health: pool.health.and_then(|h| health(&key, h, problems)),
        outlier: pool.outlier.map(|o| outlier(&key, o, problems)),
        proxy_protocol: pool.proxy_protocol,
        tls,
        body_timeout: ms(problems, &k("body_timeout_ms"), pool.body_timeout_ms),
        total_timeout: pool.total_timeout_ms.map(Duration::from_millis),
        retry: Retry {
            retries: pool.retries,
            on_error: pool.retry_on.contains(&file::RetryOn::Error),
            on_timeout: pool.retry_on.contains(&file::RetryOn::Timeout),
            budget_percent: pool.retry_budget_percent,
            min_per_second: pool.min_retries_per_second,
        },
    }
}

fn backends(key: &str, list: Vec<BackendFile>, problems: &mut Problems) -> Vec<BackendConfig> {
    if list.is_empty() {
        problems.push(format!("{key}.backends: a pool needs at least one backend"));
    }
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (i, b) in list.into_iter().enumerate() {
        let (address, bname, weight) = match b {
            BackendFile::Address(a) => (a, None, None),
            BackendFile::Full(t) => (t.address, t.name, t.weight),
        };
        let bkey = format!("{key}.backends[{i}]");
        let Some(addr) = BackendAddress::parse(&address) else {
            problems.push(format!(
                "{bkey}: {address:?} is not an address like \"127.0.0.1:9001\" or \"backend.internal:9001\""
            ));
            continue;
        };
        let weight = at_least(problems, &format!("{bkey}.weight"), weight.unwrap_or(1), 1);
        let bname = bname.unwrap_or_else(|| addr.to_string());
        if backends.iter().any(|x| x.name == bname) {
            problems.push(format!("{bkey}: a second backend named {bname:?}"));
            continue;
        }
        backends.push(BackendConfig {
            name: bname,
            address: addr,
            weight,
        });
    }
    backends
}

fn pool_tls(key: &str, pool: &PoolFile, base: &Path, problems: &mut Problems) -> Option<PoolTls> {
    if !pool.tls
        && (pool.ca.is_some()
            || pool.server_name.is_some()
            || pool.client_cert.is_some()
            || pool.client_key.is_some())
    {
        problems.push(format!(
            "{key}: ca, server_name, client_cert and client_key need tls = true"
        ));
    }
    if pool.client_cert.is_some() != pool.client_key.is_some() {
        problems.push(format!("{key}: client_cert and client_key go together"));
    }
    if let Some(n) = &pool.server_name
        && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        problems.push(format!(
            "{key}.server_name: {n:?} is not a DNS name or IP address"
        ));
    }
    pool.tls.then(|| PoolTls {
        ca: pool.ca.as_ref().map(|p| base.join(p)),
        server_name: pool.server_name.clone(),
        client_cert: pool
            .client_cert
            .as_ref()
            .zip(pool.client_key.as_ref())
            .map(|(cert, key)| CertFile {
                cert: base.join(cert),
                key: base.join(key),
            }),
    })
}

fn hash_key(key: &str, k: Option<&str>, problems: &mut Problems) -> HashKey {
    match k {
        None | Some("client_ip") => HashKey::ClientIp,
        Some("path") => HashKey::Path,
        Some(k) if let Some(name) = k.strip_prefix("header:") => {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => HashKey::Header(h),
                Err(_) => {
                    problems.push(format!("{key}.hash_key: {k:?} names no valid header"));
                    HashKey::ClientIp
                }
            }
        }
        Some(k) if let Some(name) = k.strip_prefix("cookie:").filter(|n| !n.is_empty()) => {
            HashKey::Cookie(name.to_owned())
        }
        Some(k) => {
            problems.push(format!(
                "{key}.hash_key: {k:?} is not one of \"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\""
            ));
            HashKey::ClientIp
        }
    }
}

fn health(key: &str, h: HealthFile, problems: &mut Problems) -> Option<HealthCheck> {
    let range = h.expect_status.split_once('-').map_or_else(
        || h.expect_status.trim().parse::<u16>().ok().map(|x| (x, x)),
        |(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)),
    );
    let Some(expect) = range.filter(|(a, b)| (100..=599).contains(a) && a <= b && *b <= 599) else {
        problems.push(format!(
            "{key}.health.expect_status: {:?} is not a status or range like \"200-399\"",
            h.expect_status
        ));
        return None;
    };
    if !h.path.starts_with('/') {
        problems.push(format!("{key}.health.path: must start with '/'"));
    }
    if h.port == Some(0) {
        problems.push(format!("{key}.health.port: must be 1-65535"));
    }
    let k = |sub: &str| format!("{key}.health.{sub}");
    Some(HealthCheck {
        kind: h.kind,
        path: h.path,
        expect_status: expect,
        host: h.host,
        port: h.port,
        interval: ms(problems, &k("interval_ms"), h.interval_ms),
        timeout: ms(problems, &k("timeout_ms"), h.timeout_ms),
        healthy_threshold: at_least(problems, &k("healthy_threshold"), h.healthy_threshold, 1),
        unhealthy_threshold: at_least(
            problems,
            &k("unhealthy_threshold"),
            h.unhealthy_threshold,
            1,
        ),
    })
}

fn outlier(key: &str, o: OutlierFile, problems: &mut Problems) -> Outlier {
    let k = |sub: &str| format!("{key}.outlier.{sub}");
    if o.max_ejection_ms < o.base_ejection_ms {
        problems.push(format!(
            "{}: {} is below base_ejection_ms = {}",
            k("max_ejection_ms"),
            o.max_ejection_ms,
            o.base_ejection_ms
        ));
    }
    if o.max_ejected_percent > 100 {
        problems.push(k("max_ejected_percent: must be between 0 and 100"));
    }
    Outlier {
        consecutive_5xx: at_least(problems, &k("consecutive_5xx"), o.consecutive_5xx, 1),
        consecutive_failures: at_least(
            problems,
            &k("consecutive_failures"),
            o.consecutive_failures,
            1,
        ),
        base_ejection: ms(problems, &k("base_ejection_ms"), o.base_ejection_ms),
        max_ejection: Duration::from_millis(o.max_ejection_ms),
        max_ejected_percent: o.max_ejected_percent,
    }
}
