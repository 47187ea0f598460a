//! `jwt-auth`: lets through requests that carry a valid JSON Web Token,
//! naming its subject to the backend.
//!
//! Config: `{"hs256_secret": "...", "jwks": {"keys": [...]}, "issuer":
//! "...", "audience": "...", "header": "authorization"}`. Every key but one
//! of `hs256_secret` and `jwks` is optional; `header` defaults to
//! `authorization`, where the token follows `Bearer `.
//!
//! A token is checked for its signature, `exp` (required), `nbf` (when
//! present), and the issuer and audience when the config names them,
//! with 60 s of leeway for clocks. The algorithm is the key's, never the
//! token's choice: HS256 only with `hs256_secret`, RS256 and ES256 only
//! with a key of the JWKS (by `kid`, or its only key), so a token cannot
//! make a public key serve as an HMAC secret, and `none` is never
//! accepted. A valid token is forwarded with `x-jwt-sub` set to its `sub`
//! (a client's own `x-jwt-sub` is removed); a missing or invalid one gets
//! 401 with `www-authenticate: Bearer` (RFC 6750).

use std::sync::OnceLock;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    hs256_secret: Option<String>,
    jwks: Option<JwkSet>,
    issuer: Option<String>,
    audience: Option<String>,
    #[serde(default = "authorization")]
    header: String,
}

fn authorization() -> String {
    "authorization".to_owned()
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct JwtAuth;

/// The key and algorithm for a token, chosen by the configuration: the
/// token's header only says which of the configured keys it claims.
fn key_for(c: &Config, token: &str) -> Result<(DecodingKey, Algorithm), String> {
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    match header.alg {
        Algorithm::HS256 => {
            let secret = c.hs256_secret.as_ref().ok_or("HS256 is not accepted")?;
            let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("{e}"))?;
            Ok((key, Algorithm::HS256))
        }
        alg @ (Algorithm::RS256 | Algorithm::ES256) => {
            let set = c.jwks.as_ref().ok_or("no JWKS for RS256/ES256")?;
            let jwk = match &header.kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            }
            .ok_or("no key for this token")?;
            let fits = matches!(
                (&jwk.algorithm, alg),
                (AlgorithmParameters::RSA(_), Algorithm::RS256)
                    | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
            );
            if !fits {
                return Err("the key is not of the token's algorithm".into());
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key: {e}"))?;
            Ok((key, alg))
        }
        other => Err(format!("{other:?} is not accepted")),
    }
}

fn check(c: &Config, token: &str) -> Result<Option<String>, String> {
    let (key, alg) = key_for(c, token)?;
    let mut v = Validation::new(alg);
    v.validate_nbf = true;
    match &c.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &c.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    let data = decode::<Claims>(token, &key, &v).map_err(|e| e.to_string())?;
    Ok(data.claims.sub)
}

fn unauthorized(why: &str) -> Decision {
    log::debug(&format!("token refused: {why}"));
    respond(401)
        .header("www-authenticate", "Bearer error=\"invalid_token\"")
        .header("content-type", "text/plain")
        .body("unauthorized\n")
        .into()
}

impl HttpPolicy for JwtAuth {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if c.hs256_secret.is_none() && c.jwks.is_none() {
            return Err(config_error("set hs256_secret, jwks, or both"));
        }
        if c.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(config_error("hs256_secret: at least 32 bytes"));
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return respond(503).into();
        };
        let Some(value) = req.header(&c.header) else {
            return respond(401)
                .header("www-authenticate", "Bearer")
                .header("content-type", "text/plain")
                .body("unauthorized\n")
                .into();
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return unauthorized("not a bearer token"),
        };
        match check(c, token) {
            Ok(sub) => {
                let f = forward().remove_request_header("x-jwt-sub");
                match sub {
                    Some(sub) => f.set_request_header("x-jwt-sub", &sub).into(),
                    None => f.into(),
                }
            }
            Err(why) => unauthorized(&why),
        }
    }
}

http_policy!(JwtAuth);
