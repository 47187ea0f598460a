//! The `jwt-auth` example through a real listener: valid, expired,
//! wrong-issuer, badly signed and algorithm-confused tokens, HS256 and
//! ES256 (a JWKS), signed here with the same crate the policy verifies
//! with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use switchyard_tests::*;

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "switchyard";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, iss: &str, exp_in: i64) -> serde_json::Value {
    json!({
        "sub": sub,
        "iss": iss,
        "aud": AUDIENCE,
        "exp": now() as i64 + exp_in,
        "nbf": now() - 10,
    })
}

fn hs256(c: &serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// An ES256 key pair: the signing key, and its public half as a JWK.
fn es256_key(kid: &str) -> (EncodingKey, serde_json::Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (key, jwk)
}

fn es256(c: &serde_json::Value, key: &EncodingKey, kid: &str) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.to_owned());
    encode(&h, c, key).unwrap()
}

/// `jwt-auth` on `l` in front of `web`, with its config written beside
/// a copy of the policy.
fn config(dir: &std::path::Path, policy_config: serde_json::Value) -> String {
    std::fs::copy(
        repo().join("policies/jwt-auth.wasm"),
        dir.join("jwt-auth.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("jwt-auth.json"), policy_config.to_string()).unwrap();
    let head = format!("[policies]\ndir = \"{}\"", dir.display());
    one_http_pool(&head, "", "policy = \"jwt-auth\"")
}

async fn with_token(h: &Harness, token: &str) -> Got {
    let auth = format!("Bearer {token}");
    get(
        &h.client,
        h.addr("l"),
        "/",
        &[("authorization", &auth), ("x-jwt-sub", "forged")],
    )
    .await
}

#[tokio::test]
async fn jwt_auth_checks_hs256_signature_expiry_issuer_and_audience() {
    let dir = temp_dir("jwt-hs256");
    let cfg = json!({"hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE});
    let h = Harness::start(&config(&dir, cfg), &["web"]).await;
    let got = with_token(&h, &hs256(&claims("alice", ISSUER, 300), SECRET)).await;
    assert_eq!(got.status, 200);
    let seen = h.backend("web").seen();
    let subs: Vec<_> = seen[0].headers.get_all("x-jwt-sub").iter().collect();
    assert_eq!(subs, ["alice"], "the token's subject, never the client's");
    let refused = [
        ("expired", hs256(&claims("alice", ISSUER, -3600), SECRET)),
        (
            "wrong issuer",
            hs256(&claims("alice", "https://evil.test", 300), SECRET),
        ),
        (
            "badly signed",
            hs256(
                &claims("alice", ISSUER, 300),
                "another-secret-of-more-than-32-bytes",
            ),
        ),
        ("not a token", "abc.def.ghi".to_owned()),
    ];
    for (what, token) in refused {
        let got = with_token(&h, &token).await;
        assert_eq!(got.status, 401, "{what}");
        assert!(
            got.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
    }
    let got = h.get("l", "/").await;
    assert_eq!(got.status, 401, "no token");
    assert_eq!(
        h.backend("web").seen().len(),
        1,
        "only the valid token passed"
    );
}

#[tokio::test]
async fn jwt_auth_checks_es256_tokens_against_its_jwks() {
    let dir = temp_dir("jwt-es256");
    let (key, jwk) = es256_key("k1");
    let (other_key, _) = es256_key("k1");
    let cfg = json!({"jwks": {"keys": [jwk]}, "issuer": ISSUER});
    let h = Harness::start(&config(&dir, cfg), &["web"]).await;
    let good = claims("bob", ISSUER, 300);
    let got = with_token(&h, &es256(&good, &key, "k1")).await;
    assert_eq!(got.status, 200);
    assert_eq!(h.backend("web").seen()[0].headers["x-jwt-sub"], "bob");
    let refused = [
        ("expired", es256(&claims("bob", ISSUER, -3600), &key, "k1")),
        (
            "wrong issuer",
            es256(&claims("bob", "https://evil.test", 300), &key, "k1"),
        ),
        ("signed by another key", es256(&good, &other_key, "k1")),
        ("unknown kid", es256(&good, &key, "k2")),
        // No HS256 secret is configured: an HS256 token, whatever it is
        // signed with, is refused (no key confusion with the JWKS).
        ("HS256 without a secret", hs256(&good, SECRET)),
    ];
    for (what, token) in refused {
        let got = with_token(&h, &token).await;
        assert_eq!(got.status, 401, "{what}");
    }
    assert_eq!(h.backend("web").seen().len(), 1);
}

#[tokio::test]
async fn jwt_auth_refuses_a_config_without_a_key() {
    let dir = temp_dir("jwt-nokey");
    let toml = config(&dir, json!({"issuer": ISSUER}));
    let toml = toml.replace("{web}", "127.0.0.1:9");
    let parsed = switchyard::config::Config::parse(std::path::Path::new("/t.toml"), &toml)
        .expect("the file itself is fine");
    let why = switchyard::daemon::check(parsed)
        .await
        .expect_err("the policy's init refuses its config")
        .join("\n");
    assert!(why.contains("set hs256_secret, jwks, or both"), "{why}");
}
