//! `[listeners.NAME]` checked into a [`ListenerConfig`]: what it names,
//! which keys its protocol reads, its trusted proxies and TLS. The rule
//! for numbers is `validate.rs`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::file::{self, ListenerFile};
use super::validate::{Problems, at_least, ms, names, valid_policy_name};
use super::{CertFile, ListenerConfig, ListenerTls, PoolConfig, Protocol};

pub(super) fn listener(
    name: &str,
    l: ListenerFile,
    pools: &BTreeMap<String, PoolConfig>,
    base: &Path,
    binds: &mut BTreeMap<(SocketAddr, bool), String>,
    problems: &mut Problems,
) -> Option<ListenerConfig> {
    let key = format!("listeners.{name}");
    let Ok(bind) = l.bind.parse::<SocketAddr>() else {
        problems.push(format!(
            "{key}.bind: {:?} is not an address like \"127.0.0.1:8080\"",
            l.bind
        ));
        return None;
    };
    if bind.port() != 0 {
        let udp = l.protocol == Protocol::Udp;
        if let Some(other) = binds.insert((bind, udp), name.to_owned()) {
            problems.push(format!(
                "{key}.bind: {bind} is already bound by listeners.{other}"
            ));
        }
    }
    listener_checks(&key, &l, pools, problems);
    let trusted_proxies = trusted_proxies(&key, &l, problems);
    let tls = listener_tls(&key, &l, base, problems);
    Some(listener_config(
        &key,
        l,
        bind,
        base,
        trusted_proxies,
        tls,
        problems,
    ))
}

/// What a listener names, and which of its keys its protocol reads.
fn listener_checks(
    key: &str,
    l: &ListenerFile,
    pools: &BTreeMap<String, PoolConfig>,
    problems: &mut Problems,
) {
    if let Some(pool) = &l.pool
        && !pools.contains_key(pool)
    {
        problems.push(format!(
            "{key}.pool: no pool named {pool:?} (pools: {})",
            names(pools)
        ));
    }
    if l.pool.is_none() && l.policy.is_none() {
        problems.push(format!(
            "{key}: needs a pool, a policy, or both (pools: {})",
            names(pools)
        ));
    }
    if let Some(policy) = &l.policy
        && !valid_policy_name(policy)
    {
        problems.push(format!(
            "{key}.policy: {policy:?} is not a policy name (the file name without .wasm)"
        ));
    }
    if l.policy_config.is_some() && l.policy.is_none() {
        problems.push(format!("{key}.policy_config: set without a policy"));
    }
    if l.peek_sni == Some(true) && l.protocol != Protocol::Tcp {
        problems.push(format!(
            "{key}.peek_sni: only tcp listeners peek at the TLS ClientHello"
        ));
    }
    if l.accept_proxy_protocol && l.protocol == Protocol::Udp {
        problems.push(format!(
            "{key}.accept_proxy_protocol: not supported on udp listeners"
        ));
    }
    if l.protocol != Protocol::Http {
        for (set, k) in [
            (l.max_uri_bytes.is_some(), "max_uri_bytes"),
            (l.normalize_path.is_some(), "normalize_path"),
            (
                l.path_with_escaped_slashes.is_some(),
                "path_with_escaped_slashes",
            ),
        ] {
            if set {
                problems.push(format!("{key}.{k}: only http listeners read paths"));
            }
        }
    }
    for (value, k) in [
        (l.first_byte_timeout_ms, "first_byte_timeout_ms"),
        (l.send_timeout_ms, "send_timeout_ms"),
        (l.request_body_timeout_ms, "request_body_timeout_ms"),
        (l.http2_keepalive_interval_ms, "http2_keepalive_interval_ms"),
        (l.http2_keepalive_timeout_ms, "http2_keepalive_timeout_ms"),
        (l.tunnel_idle_timeout_ms, "tunnel_idle_timeout_ms"),
    ] {
        if value.is_some() && l.protocol != Protocol::Http {
            problems.push(format!("{key}.{k}: only http listeners have it"));
        }
    }
}

fn trusted_proxies(key: &str, l: &ListenerFile, problems: &mut Problems) -> Vec<ipnet::IpNet> {
    let mut trusted = Vec::new();
    for (i, cidr) in l.trusted_proxies.iter().enumerate() {
        match cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => trusted.push(n),
            Err(_) => problems.push(format!(
                "{key}.trusted_proxies[{i}]: {cidr:?} is not a CIDR like \"10.0.0.0/8\""
            )),
        }
    }
    if l.accept_proxy_protocol && trusted.is_empty() {
        problems.push(format!(
            "{key}.accept_proxy_protocol: needs trusted_proxies (the peers allowed to send it)"
        ));
    }
    trusted
}

fn listener_tls(
    key: &str,
    l: &ListenerFile,
    base: &Path,
    problems: &mut Problems,
) -> Option<ListenerTls> {
    let t = l.tls.as_ref()?;
    if l.protocol != Protocol::Http {
        problems.push(format!(
            "{key}.tls: only http listeners terminate TLS (a tcp listener passes it through; see peek_sni)"
        ));
    }
    if t.certs.is_empty() {
        problems.push(format!(
            "{key}.tls.certs: needs at least one {{ cert = \"FILE\", key = \"FILE\" }}"
        ));
    }
    let abs = |c: &file::CertFile| CertFile {
        cert: base.join(&c.cert),
        key: base.join(&c.key),
    };
    Some(ListenerTls {
        certs: t.certs.iter().map(abs).collect(),
        default: t.default.as_ref().map(abs),
        unknown_sni: t.unknown_sni,
        client_ca: t.client_ca.as_ref().map(|p| base.join(p)),
        client_auth: t.client_auth,
        check_host: t.check_host,
        handshake_timeout: ms(
            problems,
            &format!("{key}.tls.handshake_timeout_ms"),
            t.handshake_timeout_ms,
        ),
    })
}

fn listener_config(
    key: &str,
    l: ListenerFile,
    bind: SocketAddr,
    base: &Path,
    trusted_proxies: Vec<ipnet::IpNet>,
    tls: Option<ListenerTls>,
    problems: &mut Problems,
) -> ListenerConfig {
    let k = |sub: &str| format!("{key}.{sub}");
    let mut ms = |sub: &str, v: u64| ms(problems, &k(sub), v);
    let first_byte = l.first_byte_timeout_ms.unwrap_or(l.header_read_timeout_ms);
    let idle = l.idle_timeout_ms.unwrap_or(match l.protocol {
        Protocol::Udp => 60_000,
        Protocol::Tcp => 300_000,
        Protocol::Http => 75_000,
    });
    let peek_sni = l.protocol == Protocol::Tcp && l.peek_sni.unwrap_or(l.policy.is_some());
    ListenerConfig {
        header_read_timeout: ms("header_read_timeout_ms", l.header_read_timeout_ms),
        first_byte_timeout: ms("first_byte_timeout_ms", first_byte),
        send_timeout: ms("send_timeout_ms", l.send_timeout_ms.unwrap_or(60_000)),
        request_body_timeout: ms(
            "request_body_timeout_ms",
            l.request_body_timeout_ms.unwrap_or(60_000),
        ),
        http2_keepalive_interval: ms(
            "http2_keepalive_interval_ms",
            l.http2_keepalive_interval_ms.unwrap_or(30_000),
        ),
        http2_keepalive_timeout: ms(
            "http2_keepalive_timeout_ms",
            l.http2_keepalive_timeout_ms.unwrap_or(20_000),
        ),
        tunnel_idle_timeout: ms(
            "tunnel_idle_timeout_ms",
            l.tunnel_idle_timeout_ms.unwrap_or(300_000),
        ),
        sni_peek_timeout: ms("sni_peek_timeout_ms", l.sni_peek_timeout_ms),
        idle_timeout: ms("idle_timeout_ms", idle),
        max_connections: at_least(problems, &k("max_connections"), l.max_connections, 1),
        max_header_bytes: at_least(problems, &k("max_header_bytes"), l.max_header_bytes, 8192),
        max_uri_bytes: at_least(
            problems,
            &k("max_uri_bytes"),
            l.max_uri_bytes.unwrap_or(8192),
            1,
        ),
        new_flows_per_source_per_second: at_least(
            problems,
            &k("new_flows_per_source_per_second"),
            l.new_flows_per_source_per_second.unwrap_or(100),
            1,
        ),
        protocol: l.protocol,
        bind,
        pool: l.pool,
        policy: l.policy,
        on_error: l.on_error,
        policy_config: l.policy_config.map(|p| base.join(p)),
        max_request_body_bytes: l.max_request_body_bytes,
        max_headers: l.max_headers,
        accept_proxy_protocol: l.accept_proxy_protocol,
        trusted_proxies,
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        access_log: l.access_log,
        peek_sni,
        tls,
        normalize_path: l.normalize_path.unwrap_or(true),
        path_with_escaped_slashes: l.path_with_escaped_slashes.unwrap_or_default(),
    }
}
