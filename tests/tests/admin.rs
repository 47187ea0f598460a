//! The admin listener: metrics, health and readiness, pools and policies,
//! and draining a backend by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_tests::*;

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{a}", "{b}"]
[pools.api]
backends = ["{a}"]
[pools.images]
backends = ["{a}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
"#;

#[tokio::test]
async fn metrics_pools_policies_and_drain() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let sy = start_switchyard(CONFIG, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let admin = sy.admin_addr.expect("admin listener");
    let c = client(false);
    for _ in 0..10 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    }
    assert_eq!(get(&c, admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(&c, admin, "/readyz", &[]).await.status, 200);

    let m = get(&c, admin, "/metrics", &[]).await.text();
    for want in [
        "switchyard_http_requests_total{listener=\"l\",pool=\"web\",backend=",
        "status_class=\"2xx\"} 5",
        "switchyard_http_request_duration_seconds_bucket{",
        "switchyard_policy_calls_total{policy=\"path-router\",outcome=\"ok\"} 10",
        "switchyard_policy_call_duration_seconds_count{policy=\"path-router\"} 10",
        "switchyard_policy_version_info{policy=\"path-router\",version=",
        "switchyard_backend_healthy{pool=\"web\",backend=",
        "switchyard_active_connections{listener=\"l\"}",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }

    let pools: serde_json::Value =
        serde_json::from_slice(&get(&c, admin, "/api/pools/web", &[]).await.body).unwrap();
    assert_eq!(pools["backends"].as_array().unwrap().len(), 2);
    assert_eq!(pools["backends"][0]["available"], true);
    let policies: serde_json::Value =
        serde_json::from_slice(&get(&c, admin, "/api/policies", &[]).await.body).unwrap();
    assert_eq!(policies[0]["name"], "path-router");
    assert_eq!(policies[0]["calls"], 10);
    assert_eq!(
        policies[0]["version"].as_str().unwrap(),
        sy.policy_version("l").unwrap()
    );

    // Drain b: nothing new goes to it; undrain: it is back.
    let path = format!("/api/pools/web/backends/{}/drain", b.addr);
    assert_eq!(post(&c, admin, &path).await.status, 200);
    for _ in 0..10 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.text(), "a");
    }
    let path = format!("/api/pools/web/backends/{}/undrain", b.addr);
    assert_eq!(post(&c, admin, &path).await.status, 200);
    let mut to_b = 0;
    for _ in 0..10 {
        if get(&c, sy.addr("l"), "/", &[]).await.text() == "b" {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 5);
    assert_eq!(get(&c, admin, "/api/pools/nope", &[]).await.status, 404);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn no_admin_section_means_no_admin_listener() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let text = CONFIG.replace("[admin]\nbind = \"127.0.0.1:0\"\n", "");
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    assert!(sy.admin_addr.is_none());
    sy.shutdown(Duration::from_secs(5)).await;
}
