//! Backends given by DNS name are sets (issue 23): every A/AAAA address
//! of a name, or every SRV target, is a backend; membership follows the
//! records with no failed request; a failed lookup keeps the last good
//! set. A real authoritative DNS server (hickory-server) answers on
//! loopback; backends listen on 127.0.0.11-15.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use switchyard_tests::*;
use tokio::net::{TcpListener, UdpSocket};

/// An authoritative server for `test.` on 127.0.0.1, its records
/// replaceable while it runs.
struct TestDns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    _server: Server<Catalog>,
}

impl TestDns {
    async fn start() -> TestDns {
        let origin = Name::from_str("test.").unwrap();
        let mut zone: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("admin.test.").unwrap(),
            1,
            60,
            60,
            60,
            1,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 0);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        TestDns {
            addr,
            zone,
            _server: server,
        }
    }

    /// Replaces the records of `name` and `rtype` (none: removes them).
    async fn set(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        let name = Name::from_str(name).unwrap();
        let key = RrKey::new(LowerName::from(&name), rtype);
        let mut records = self.zone.records_mut().await;
        if data.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::with_ttl(name.clone(), rtype, 1);
        for d in data {
            set.insert(Record::from_rdata(name.clone(), 1, d), 0);
        }
        records.insert(key, Arc::new(set));
    }

    async fn set_a(&self, name: &str, last_octets: &[u8]) {
        let data = last_octets
            .iter()
            .map(|o| RData::A(A(Ipv4Addr::new(127, 0, 0, *o))))
            .collect();
        self.set(name, RecordType::A, data).await;
    }
}

/// Backends named `b<octet>` on 127.0.0.<octet>, all on one port.
async fn backends_on_one_port(octets: &[u8]) -> (u16, BTreeMap<u8, TestBackend>) {
    let first = TestBackend::start_on(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octets[0])), 0),
        &format!("b{}", octets[0]),
        None,
    )
    .await;
    let port = first.addr.port();
    let mut all = BTreeMap::from([(octets[0], first)]);
    for &o in &octets[1..] {
        let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, o)), port);
        all.insert(o, TestBackend::start_on(at, &format!("b{o}"), None).await);
    }
    (port, all)
}

fn names(sy: &switchyard::daemon::Running) -> Vec<String> {
    let u = sy.upstreams();
    let mut n: Vec<String> = u
        .pool("web")
        .unwrap()
        .backends
        .iter()
        .map(|b| b.name.to_string())
        .collect();
    n.sort();
    n
}

fn expect(port: u16, octets: &[u8]) -> Vec<String> {
    octets
        .iter()
        .map(|o| format!("api.test:{port}~127.0.0.{o}"))
        .collect()
}

/// Sends requests one after another until `stop`, counting the answers
/// that are not 200 (bounded: at most 20,000 requests or 30 s).
fn steady_load(at: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let c = client(false);
        let (mut sent, mut failed) = (0, 0);
        let started = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed)
            && sent < 20_000
            && started.elapsed() < Duration::from_secs(30)
        {
            let got = get(&c, at, "/", &[]).await;
            sent += 1;
            if got.status != 200 {
                failed += 1;
            }
        }
        (sent, failed)
    })
}

#[tokio::test]
async fn a_dns_name_is_a_set_that_follows_its_records_without_a_failed_request() {
    let dns = TestDns::start().await;
    let (port, backends) = backends_on_one_port(&[11, 12, 13, 14, 15]).await;
    dns.set_a("api.test.", &[11, 12, 13]).await;
    let text = format!(
        r#"
[admin]
bind = "127.0.0.1:0"
[dns]
servers = ["{}"]
[pools.web]
backends = ["api.test:{port}"]
resolve_interval_ms = 200
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#,
        dns.addr
    );
    let sy = start_switchyard(&text, &BTreeMap::new()).await;
    assert_eq!(names(&sy), expect(port, &[11, 12, 13]));
    let kept = sy.upstreams().pool("web").unwrap().backends[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(sy.addr("l"), stop.clone());

    // 3 -> 2 -> 4 addresses, under load.
    dns.set_a("api.test.", &[11, 12]).await;
    wait_until("the set shrinks to 2", Duration::from_secs(5), || {
        names(&sy) == expect(port, &[11, 12])
    })
    .await;
    let gone_at = backends[&13].seen().len();
    dns.set_a("api.test.", &[11, 12, 14, 15]).await;
    wait_until("the set grows to 4", Duration::from_secs(5), || {
        names(&sy) == expect(port, &[11, 12, 14, 15])
    })
    .await;
    let (b14, b15) = (&backends[&14], &backends[&15]);
    wait_until(
        "the new addresses get traffic",
        Duration::from_secs(5),
        || !b14.seen().is_empty() && !b15.seen().is_empty(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(sent > 50, "only {sent} requests were sent");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the changes"
    );
    // The removed address got nothing new after it left.
    assert_eq!(backends[&13].seen().len(), gone_at);
    // A backend that stayed is the same one: its health, counters and
    // connections carried over.
    let now = sy.upstreams().pool("web").unwrap().backends[0].clone();
    assert!(Arc::ptr_eq(&kept, &now), "127.0.0.11 was rebuilt");
    let changes = metric(&sy, "switchyard_dns_changes_total", "api.test").await;
    assert!(changes >= 2.0, "dns changes counted: {changes}");

    // An empty answer (the records removed) keeps the last good set, and
    // is counted.
    dns.set("api.test.", RecordType::A, Vec::new()).await;
    wait_for_metric(
        &sy,
        "switchyard_dns_failures_total",
        "api.test",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(names(&sy), expect(port, &[11, 12, 14, 15]));
    let got = get(&client(false), sy.addr("l"), "/", &[]).await;
    assert_eq!(got.status, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_srv_name_gives_ports_and_weights_and_its_lowest_priority_serves() {
    let dns = TestDns::start().await;
    let heavy = TestBackend::start_on("127.0.0.21:0".parse().unwrap(), "heavy", None).await;
    let light = TestBackend::start_on("127.0.0.22:0".parse().unwrap(), "light", None).await;
    let backup = TestBackend::start_on("127.0.0.23:0".parse().unwrap(), "backup", None).await;
    for (host, octet) in [("heavy", 21), ("light", 22), ("backup", 23)] {
        dns.set_a(&format!("{host}.test."), &[octet]).await;
    }
    let srv = |priority, weight, port, target: &str| {
        RData::SRV(SRV::new(
            priority,
            weight,
            port,
            Name::from_str(target).unwrap(),
        ))
    };
    dns.set(
        "_http._tcp.api.test.",
        RecordType::SRV,
        vec![
            srv(1, 3, heavy.addr.port(), "heavy.test."),
            srv(1, 1, light.addr.port(), "light.test."),
            srv(2, 1, backup.addr.port(), "backup.test."),
        ],
    )
    .await;
    let text = format!(
        r#"
[dns]
servers = ["{}"]
[pools.web]
algorithm = "weighted"
backends = ["srv:_http._tcp.api.test"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#,
        dns.addr
    );
    let sy = start_switchyard(&text, &BTreeMap::new()).await;
    let u = sy.upstreams();
    let pool = u.pool("web").unwrap();
    let mut got: Vec<(String, u32)> = pool
        .backends
        .iter()
        .map(|b| (b.name.to_string(), b.weight))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                format!("srv:_http._tcp.api.test~127.0.0.21~{}", heavy.addr.port()),
                3
            ),
            (
                format!("srv:_http._tcp.api.test~127.0.0.22~{}", light.addr.port()),
                1
            ),
        ]
    );
    let c = client(false);
    let counts = Arc::new(AtomicUsize::new(0));
    for _ in 0..40 {
        let text = get(&c, sy.addr("l"), "/", &[]).await.text();
        if text == "heavy" {
            counts.fetch_add(1, Ordering::Relaxed);
        }
        assert_ne!(text, "backup", "a priority-2 target served");
    }
    // Smooth weighted round-robin: exactly 3 of every 4.
    assert_eq!(counts.load(Ordering::Relaxed), 30);
    sy.shutdown(Duration::from_secs(5)).await;
}
