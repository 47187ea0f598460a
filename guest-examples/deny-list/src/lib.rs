//! `deny-list`: `403 Forbidden` for configured path prefixes and client
//! networks; everything else goes to the listener's default pool.
//!
//! Config: `{"paths": ["/admin/", "/.git"], "cidrs": ["203.0.113.0/24", "2001:db8::/32"]}`.

use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;
use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
}

struct Config {
    paths: Vec<String>,
    nets: Vec<IpNet>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct DenyList;

fn forbidden() -> Decision {
    respond(403)
        .header("content-type", "text/plain")
        .body("forbidden\n")
        .into()
}

impl HttpPolicy for DenyList {
    fn init(config: String) -> Result<(), String> {
        let f: ConfigFile = serde_json::from_str(&config).map_err(config_error)?;
        let nets = f
            .cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("config: {c:?} is not a CIDR like 203.0.113.0/24"))
            })
            .collect::<Result<_, _>>()?;
        let c = Config {
            paths: f.paths,
            nets,
        };
        CONFIG.set(c).map_err(|_| "init called twice".to_string())
    }

    fn on_request(req: &RequestHead, conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return forward().into();
        };
        let path = req.path();
        if c.paths.iter().any(|p| path.starts_with(p.as_str())) {
            return forbidden();
        }
        if let Ok(ip) = conn.client().ip.parse::<IpAddr>() {
            // An IPv4 client seen through an IPv6 socket matches IPv4 nets.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            if c.nets.iter().any(|n| n.contains(&ip)) {
                return forbidden();
            }
        }
        forward().into()
    }
}

http_policy!(DenyList);
