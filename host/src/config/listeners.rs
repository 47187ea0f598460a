//! `[listeners.NAME]` checked into a [`ListenerConfig`] (`settings.rs`):
//! what every listener has, then one section per protocol with only the
//! keys that protocol reads. A key set on a listener whose protocol does not read it
//! is an error that names it, never ignored. The rule for numbers is
//! `validate.rs`'s.
//!
//! The file side (`file/listener.rs`) stays one flat table, so that a
//! misplaced key gets a sentence saying which protocols read it rather
//! than serde's "unknown field".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::file::{self, ListenerFile};
use super::settings::{
    HttpSettings, Listener, ListenerConfig, ProtocolSettings, TcpSettings, UdpSettings,
};
use super::validate::{Problems, at_least, ms, names, valid_policy_name};
use super::{CertFile, ListenerTls, PoolConfig, Protocol};

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
    common_checks(&key, &l, pools, problems);
    foreign_keys(&key, &l, problems);
    let settings = match l.protocol {
        Protocol::Http => ProtocolSettings::Http(Box::new(http(&key, &l, pools, base, problems))),
        Protocol::Tcp => ProtocolSettings::Tcp(tcp(&key, &l, problems)),
        Protocol::Udp => ProtocolSettings::Udp(udp(&key, &l, problems)),
    };
    Some(Listener {
        bind,
        max_connections: at_least(
            problems,
            &format!("{key}.max_connections"),
            l.max_connections,
            1,
        ),
        pool: l.pool,
        policy: l.policy,
        on_error: l.on_error,
        policy_config: l.policy_config.map(|p| base.join(p)),
        access_log: l.access_log,
        settings,
    })
}

/// What every listener names.
fn common_checks(
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
}

/// A key, and whether the file sets it.
type KeySet = (&'static str, bool);

/// Refuses each key set on a listener whose protocol does not read it.
fn foreign_keys(key: &str, l: &ListenerFile, problems: &mut Problems) {
    let http = [
        ("header_read_timeout_ms", l.header_read_timeout_ms.is_some()),
        ("max_request_body_bytes", l.max_request_body_bytes.is_some()),
        ("max_policy_body_bytes", l.max_policy_body_bytes.is_some()),
        ("policy_call_pools", l.policy_call_pools.is_some()),
        ("policy_call_timeout_ms", l.policy_call_timeout_ms.is_some()),
        ("max_header_bytes", l.max_header_bytes.is_some()),
        ("max_headers", l.max_headers.is_some()),
        (
            "http2_max_concurrent_streams",
            l.http2_max_concurrent_streams.is_some(),
        ),
        ("max_uri_bytes", l.max_uri_bytes.is_some()),
        ("normalize_path", l.normalize_path.is_some()),
        ("request_ids", l.request_ids.is_some()),
        (
            "path_with_escaped_slashes",
            l.path_with_escaped_slashes.is_some(),
        ),
        ("first_byte_timeout_ms", l.first_byte_timeout_ms.is_some()),
        ("send_timeout_ms", l.send_timeout_ms.is_some()),
        ("lingering_time_ms", l.lingering_time_ms.is_some()),
        (
            "request_body_timeout_ms",
            l.request_body_timeout_ms.is_some(),
        ),
        (
            "http2_keepalive_interval_ms",
            l.http2_keepalive_interval_ms.is_some(),
        ),
        (
            "http2_keepalive_timeout_ms",
            l.http2_keepalive_timeout_ms.is_some(),
        ),
        ("tunnel_idle_timeout_ms", l.tunnel_idle_timeout_ms.is_some()),
        ("tls", l.tls.is_some()),
        ("capture", l.capture.is_some()),
    ];
    let tcp = [
        ("peek_sni", l.peek_sni.is_some()),
        ("sni_peek_timeout_ms", l.sni_peek_timeout_ms.is_some()),
    ];
    let streams = [
        ("trusted_proxies", !l.trusted_proxies.is_empty()),
        ("accept_proxy_protocol", l.accept_proxy_protocol),
    ];
    let udp = [(
        "new_flows_per_source_per_second",
        l.new_flows_per_source_per_second.is_some(),
    )];
    let groups: [(&[Protocol], &[KeySet]); 4] = [
        (&[Protocol::Http], &http),
        (&[Protocol::Tcp], &tcp),
        (&[Protocol::Http, Protocol::Tcp], &streams),
        (&[Protocol::Udp], &udp),
    ];
    for (readers, keys) in groups {
        if readers.contains(&l.protocol) {
            continue;
        }
        let readers: Vec<String> = readers.iter().map(|p| protocol_name(*p)).collect();
        for (k, _) in keys.iter().filter(|(_, set)| *set) {
            let hint = if *k == "tls" {
                " (a tcp listener passes TLS through; see peek_sni)"
            } else {
                ""
            };
            problems.push(format!(
                "{key}.{k}: a {} listener does not read it; only {} listeners do{hint}",
                protocol_name(l.protocol),
                readers.join(" and "),
            ));
        }
    }
}

fn protocol_name(p: Protocol) -> String {
    format!("{p:?}").to_lowercase()
}

/// `[listeners.NAME]` with `protocol = "http"`.
fn http(
    key: &str,
    l: &ListenerFile,
    pools: &BTreeMap<String, PoolConfig>,
    base: &Path,
    problems: &mut Problems,
) -> HttpSettings {
    let k = |sub: &str| format!("{key}.{sub}");
    let policy_call_pools = call_pools(key, l, pools, problems);
    let header_read = l.header_read_timeout_ms.unwrap_or(10_000);
    // The first byte's default is the head's: `ms` below still checks it.
    let trusted_proxies = trusted_proxies(key, l, problems);
    let tls = listener_tls(key, l, base, problems);
    let mut ms =
        |sub: &str, v: Option<u64>, default: u64| ms(problems, &k(sub), v.unwrap_or(default));
    HttpSettings {
        header_read_timeout: ms("header_read_timeout_ms", Some(header_read), header_read),
        first_byte_timeout: ms(
            "first_byte_timeout_ms",
            l.first_byte_timeout_ms,
            header_read,
        ),
        send_timeout: ms("send_timeout_ms", l.send_timeout_ms, 60_000),
        lingering_time: ms("lingering_time_ms", l.lingering_time_ms, 30_000),
        request_body_timeout: ms("request_body_timeout_ms", l.request_body_timeout_ms, 60_000),
        http2_keepalive_interval: ms(
            "http2_keepalive_interval_ms",
            l.http2_keepalive_interval_ms,
            30_000,
        ),
        http2_keepalive_timeout: ms(
            "http2_keepalive_timeout_ms",
            l.http2_keepalive_timeout_ms,
            20_000,
        ),
        tunnel_idle_timeout: ms("tunnel_idle_timeout_ms", l.tunnel_idle_timeout_ms, 300_000),
        idle_timeout: ms("idle_timeout_ms", l.idle_timeout_ms, 75_000),
        policy_call_timeout: ms("policy_call_timeout_ms", l.policy_call_timeout_ms, 1_000),
        max_header_bytes: at_least(
            problems,
            &k("max_header_bytes"),
            l.max_header_bytes.unwrap_or(64 * 1024),
            8192,
        ),
        max_uri_bytes: at_least(
            problems,
            &k("max_uri_bytes"),
            l.max_uri_bytes.unwrap_or(8192),
            1,
        ),
        max_headers: l.max_headers.unwrap_or(100),
        max_request_body_bytes: l.max_request_body_bytes,
        max_policy_body_bytes: policy_body_cap(&k("max_policy_body_bytes"), l, problems),
        policy_call_pools,
        http2_max_concurrent_streams: l.http2_max_concurrent_streams.unwrap_or(200),
        accept_proxy_protocol: l.accept_proxy_protocol,
        trusted_proxies,
        tls,
        normalize_path: l.normalize_path.unwrap_or(true),
        request_ids: l.request_ids.unwrap_or(true),
        path_with_escaped_slashes: l.path_with_escaped_slashes.unwrap_or_default(),
        capture: super::rollout::capture(key, &l.capture, base, problems),
    }
}

/// The pools a policy may call: pools of this configuration, and only
/// with a policy to call them.
fn call_pools(
    key: &str,
    l: &ListenerFile,
    pools: &BTreeMap<String, PoolConfig>,
    problems: &mut Problems,
) -> Vec<String> {
    let Some(named) = &l.policy_call_pools else {
        return Vec::new();
    };
    if l.policy.is_none() {
        problems.push(format!("{key}.policy_call_pools: set without a policy"));
    }
    for p in named {
        if !pools.contains_key(p) {
            problems.push(format!(
                "{key}.policy_call_pools: no pool named {p:?} (pools: {})",
                super::validate::names(pools)
            ));
        }
    }
    named.clone()
}

/// The most request or response body bytes a policy may read: 1 MiB
/// unless set, at most [`MAX_POLICY_BODY_BYTES`] (the body is copied into
/// the policy instance's memory).
fn policy_body_cap(key: &str, l: &ListenerFile, problems: &mut Problems) -> u64 {
    let v = l.max_policy_body_bytes.unwrap_or(1 << 20);
    if v > MAX_POLICY_BODY_BYTES {
        problems.push(format!(
            "{key}: must be at most {MAX_POLICY_BODY_BYTES} (16 MiB)"
        ));
    }
    v
}

/// The largest `max_policy_body_bytes`.
pub const MAX_POLICY_BODY_BYTES: u64 = 16 << 20;

/// `[listeners.NAME]` with `protocol = "tcp"`.
fn tcp(key: &str, l: &ListenerFile, problems: &mut Problems) -> TcpSettings {
    let k = |sub: &str| format!("{key}.{sub}");
    TcpSettings {
        trusted_proxies: trusted_proxies(key, l, problems),
        accept_proxy_protocol: l.accept_proxy_protocol,
        peek_sni: l.peek_sni.unwrap_or(l.policy.is_some()),
        sni_peek_timeout: ms(
            problems,
            &k("sni_peek_timeout_ms"),
            l.sni_peek_timeout_ms.unwrap_or(1_000),
        ),
        idle_timeout: ms(
            problems,
            &k("idle_timeout_ms"),
            l.idle_timeout_ms.unwrap_or(300_000),
        ),
    }
}

/// `[listeners.NAME]` with `protocol = "udp"`.
fn udp(key: &str, l: &ListenerFile, problems: &mut Problems) -> UdpSettings {
    let k = |sub: &str| format!("{key}.{sub}");
    UdpSettings {
        idle_timeout: ms(
            problems,
            &k("idle_timeout_ms"),
            l.idle_timeout_ms.unwrap_or(60_000),
        ),
        new_flows_per_source_per_second: at_least(
            problems,
            &k("new_flows_per_source_per_second"),
            l.new_flows_per_source_per_second.unwrap_or(100),
            1,
        ),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ProtocolSettings};

    fn listener(proto: &str, extra: &str) -> String {
        format!(
            "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n[listeners.l]\nprotocol = \"{proto}\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{extra}"
        )
    }

    fn refusal(text: &str) -> String {
        Config::parse(Path::new("/etc/sy/s.toml"), text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string()
    }

    /// Every key only some protocols read is refused, by name, on a
    /// listener of another protocol: never ignored.
    #[test]
    fn a_key_its_protocol_does_not_read_is_refused_by_name() {
        let cases = [
            ("tcp", "header_read_timeout_ms = 5000"),
            ("udp", "max_request_body_bytes = 10"),
            ("tcp", "max_header_bytes = 9000"),
            ("tcp", "max_headers = 10"),
            ("udp", "http2_max_concurrent_streams = 5"),
            ("tcp", "max_uri_bytes = 100"),
            ("udp", "normalize_path = false"),
            ("tcp", "path_with_escaped_slashes = \"keep\""),
            ("tcp", "first_byte_timeout_ms = 5"),
            ("udp", "send_timeout_ms = 5"),
            ("tcp", "request_body_timeout_ms = 5"),
            ("tcp", "http2_keepalive_interval_ms = 5"),
            ("udp", "http2_keepalive_timeout_ms = 5"),
            ("tcp", "tunnel_idle_timeout_ms = 5"),
            ("http", "peek_sni = false"),
            ("udp", "peek_sni = true"),
            ("http", "sni_peek_timeout_ms = 5"),
            ("udp", "trusted_proxies = [\"10.0.0.0/8\"]"),
            ("udp", "accept_proxy_protocol = true"),
            ("http", "new_flows_per_source_per_second = 5"),
            ("tcp", "new_flows_per_source_per_second = 5"),
            ("tcp", "[listeners.l.tls]\ncerts = []"),
            ("udp", "max_policy_body_bytes = 10"),
        ];
        for (proto, line) in cases {
            let key = line.split(['\n', ' ']).next().unwrap();
            let key = key
                .trim_start_matches("[listeners.l.")
                .trim_end_matches(']');
            let e = refusal(&listener(proto, &format!("{line}\n")));
            let want = format!("listeners.l.{key}: a {proto} listener does not read it");
            assert!(e.contains(&want), "{proto} {line}: {e}");
        }
    }

    /// Each protocol gets its own section with its defaults; the keys
    /// every protocol reads stay beside it.
    #[test]
    fn each_protocol_gets_its_own_settings_with_their_defaults() {
        let c = Config::parse(Path::new("/s.toml"), &listener("http", "")).unwrap();
        let l = &c.listeners["l"];
        assert_eq!(l.max_connections, 10_000);
        let ProtocolSettings::Http(h) = &l.settings else {
            panic!("{l:?}")
        };
        assert_eq!(h.header_read_timeout.as_millis(), 10_000);
        assert_eq!(h.first_byte_timeout, h.header_read_timeout);
        assert_eq!((h.max_header_bytes, h.max_headers), (65_536, 100));
        assert_eq!(h.idle_timeout.as_millis(), 75_000);

        let text = listener("tcp", "idle_timeout_ms = 1234\n");
        let c = Config::parse(Path::new("/s.toml"), &text).unwrap();
        let ProtocolSettings::Tcp(t) = &c.listeners["l"].settings else {
            panic!()
        };
        assert_eq!(t.idle_timeout.as_millis(), 1234);
        assert!(!t.peek_sni, "no policy, no peek");
        assert_eq!(t.sni_peek_timeout.as_millis(), 1000);

        let c = Config::parse(Path::new("/s.toml"), &listener("udp", "")).unwrap();
        let ProtocolSettings::Udp(u) = &c.listeners["l"].settings else {
            panic!()
        };
        assert_eq!(u.idle_timeout.as_millis(), 60_000);
        assert_eq!(u.new_flows_per_source_per_second, 100);
    }

    /// What a policy may read of a body: 1 MiB by default, at most
    /// 16 MiB, and at most half of a policy's memory.
    #[test]
    fn the_policy_body_cap_has_a_default_and_two_bounds() {
        let c = Config::parse(Path::new("/s.toml"), &listener("http", "")).unwrap();
        let ProtocolSettings::Http(h) = &c.listeners["l"].settings else {
            panic!()
        };
        assert_eq!(h.max_policy_body_bytes, 1 << 20);
        let e = refusal(&listener("http", "max_policy_body_bytes = 16777217\n"));
        assert!(
            e.contains("listeners.l.max_policy_body_bytes: must be at most 16777216"),
            "{e}"
        );
        let small = "[policies]\nmemory_mb = 2\n".to_owned()
            + &listener("http", "policy = \"p\"\nmax_policy_body_bytes = 1048577\n");
        let e = refusal(&small);
        assert!(
            e.contains("listeners.l.max_policy_body_bytes: 1048577 is over half of a policy's memory (policies.memory_mb = 2 MiB)"),
            "{e}"
        );
    }
}
