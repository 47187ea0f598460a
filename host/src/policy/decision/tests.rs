//! The validation of guest decisions, case by case.

use super::*;
use crate::policy::directory::OpenDirectory;

fn fwd() -> types::Forward {
    types::Forward {
        pool: None,
        backend: None,
        path: None,
        authority: None,
        request_headers: vec![],
        response_headers: vec![],
        inspect_response: false,
        context: None,
        body: None,
        response_body_limit: None,
    }
}

fn set(name: &str, value: &str) -> types::HeaderOp {
    types::HeaderOp::Set(types::Header {
        name: name.into(),
        value: value.into(),
    })
}

fn check(f: types::Forward) -> Result<HttpDecision, String> {
    http(
        types::Decision::Forward(f),
        Some("web"),
        &OpenDirectory,
        Allowed::default(),
    )
}

#[test]
fn oversized_decisions_are_invalid_not_applied() {
    let mut f = fwd();
    f.response_headers = (0..MAX_HEADER_OPS)
        .map(|i| set("x-n", &i.to_string()))
        .collect();
    assert!(
        check(f.clone()).is_ok(),
        "{MAX_HEADER_OPS} operations are allowed"
    );
    f.request_headers.push(set("x-one", "more"));
    assert!(check(f).unwrap_err().contains("header operations"));
    let mut f = fwd();
    f.request_headers = vec![set("x-big", &"a".repeat(MAX_DECISION_BYTES))];
    assert!(check(f).unwrap_err().contains("bytes"));
    let big = types::Decision::Respond(types::Response {
        status: 200,
        headers: vec![],
        body: vec![0; MAX_BODY_BYTES + 1],
    });
    assert!(
        http(big, None, &OpenDirectory, Allowed::default())
            .unwrap_err()
            .contains("body")
    );
    let edits = (0..=MAX_HEADER_OPS).map(|_| set("x-n", "1")).collect();
    assert!(response_edits(edits).is_err());
}

#[test]
fn only_named_pools_and_backends_are_looked_up() {
    use super::super::directory::StaticDirectory;
    // Knows pool "api" only, with one backend "a1".
    let dir = StaticDirectory::new(
        [(
            "api".to_string(),
            vec![types::Backend {
                name: "a1".into(),
                address: "127.0.0.1:1".into(),
                weight: 1,
                healthy: true,
                in_flight: 0,
            }],
        )]
        .into(),
    );
    let decide = |pool: Option<&str>, backend: Option<&str>, default: Option<&str>| {
        let mut f = fwd();
        f.pool = pool.map(Into::into);
        f.backend = backend.map(Into::into);
        http(
            types::Decision::Forward(f),
            default,
            &dir,
            Allowed::default(),
        )
        .map(|_| ())
    };
    // The listener's own pool was checked when the configuration
    // loaded; a forward naming nothing is not looked up again (this
    // directory does not know "web").
    assert_eq!(decide(None, None, Some("web")), Ok(()));
    assert_eq!(decide(None, None, None), Ok(()));
    // A named backend is checked in the listener's pool...
    assert_eq!(decide(None, Some("a1"), Some("api")), Ok(()));
    let e = decide(None, Some("a2"), Some("api")).unwrap_err();
    assert!(e.contains("no backend named \"a2\""), "{e}");
    // ...and refused when the listener has none.
    let e = decide(None, Some("a1"), None).unwrap_err();
    assert!(e.contains("no default pool"), "{e}");
    // A named pool is always checked.
    assert_eq!(decide(Some("api"), Some("a1"), Some("web")), Ok(()));
    let e = decide(Some("web"), None, Some("api")).unwrap_err();
    assert!(e.contains("no pool named \"web\""), "{e}");
}

#[test]
fn crlf_in_a_header_value_is_refused() {
    let mut f = fwd();
    f.request_headers.push(set("x-a", "ok\r\nx-injected: 1"));
    let e = check(f).unwrap_err();
    assert!(e.contains("x-a"), "{e}");
}

#[test]
fn framing_and_hop_by_hop_headers_are_refused() {
    for h in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "host",
        "upgrade",
        "te",
    ] {
        let mut f = fwd();
        f.response_headers.push(set(h, "1"));
        let e = check(f).unwrap_err();
        assert!(e.contains("managed by the proxy"), "{h}: {e}");
    }
}

#[test]
fn bad_paths_authorities_and_statuses_are_refused() {
    let mut f = fwd();
    f.path = Some("no-slash".into());
    assert!(check(f).is_err());
    let mut f = fwd();
    f.path = Some("/a b".into());
    assert!(check(f).is_err());
    let mut f = fwd();
    f.authority = Some("bad host/x".into());
    assert!(check(f).is_err());
    for status in [0, 101, 600, 1000] {
        let r = types::Response {
            status,
            headers: vec![],
            body: vec![],
        };
        assert!(
            http(
                types::Decision::Respond(r),
                None,
                &OpenDirectory,
                Allowed::default()
            )
            .is_err()
        );
    }
}

#[test]
fn valid_forward_keeps_every_field() {
    let mut f = fwd();
    f.pool = Some("api".into());
    f.path = Some("/v2/x?y=1".into());
    f.request_headers.push(set("X-Trace", "abc"));
    f.request_headers
        .push(types::HeaderOp::Remove("cookie".into()));
    let HttpDecision::Forward(a) = check(f).unwrap() else {
        panic!("not a forward")
    };
    assert_eq!(a.pool.as_deref(), Some("api"));
    assert_eq!(a.path.unwrap().as_str(), "/v2/x?y=1");
    assert_eq!(
        a.request_headers,
        vec![
            HeaderEdit::Set(
                HeaderName::from_static("x-trace"),
                HeaderValue::from_static("abc")
            ),
            HeaderEdit::Remove(HeaderName::from_static("cookie")),
        ]
    );
}

fn read(over_limit: types::OverLimit, context: Option<Vec<u8>>) -> types::Decision {
    types::Decision::ReadBody(types::ReadBody {
        limit: 100,
        over_limit,
        context,
    })
}

const BODY_HOOK: Allowed = Allowed {
    read_body: true,
    inspect_response: false,
};

#[test]
fn read_body_needs_the_body_hook_and_the_request_phase() {
    let d = || read(types::OverLimit::Refuse, None);
    let e = http(d(), None, &OpenDirectory, Allowed::default()).unwrap_err();
    assert!(e.contains("switchyard:policy/body-hook"), "{e}");
    let ok = http(d(), None, &OpenDirectory, BODY_HOOK).unwrap();
    assert_eq!(
        ok,
        HttpDecision::ReadBody(ReadBody {
            limit: 100,
            over_limit: OverLimit::Refuse,
            context: None
        })
    );
}

#[test]
fn read_bodys_fallback_and_context_are_checked_like_a_forward() {
    let mut bad = fwd();
    bad.path = Some("no-slash".into());
    let e = http(
        read(types::OverLimit::Forward(bad), None),
        None,
        &OpenDirectory,
        BODY_HOOK,
    )
    .unwrap_err();
    assert!(e.contains("does not start with '/'"), "{e}");
    let e = http(
        read(types::OverLimit::Refuse, Some(vec![0; 513])),
        None,
        &OpenDirectory,
        BODY_HOOK,
    )
    .unwrap_err();
    assert!(e.contains("a context of 513 bytes"), "{e}");
}

#[test]
fn a_replacement_body_is_capped_and_a_response_body_needs_the_hook() {
    let mut f = fwd();
    f.body = Some(vec![b'x'; MAX_BODY_BYTES + 1]);
    assert!(check(f).unwrap_err().contains("a request body of"));
    let mut f = fwd();
    f.body = Some(b"new".to_vec());
    let HttpDecision::Forward(a) = check(f).unwrap() else {
        panic!("a forward")
    };
    assert_eq!(a.body.as_deref().map(|b| &b[..]), Some(&b"new"[..]));
    let mut f = fwd();
    f.response_body_limit = Some(10);
    assert!(
        check(f)
            .unwrap_err()
            .contains("response-body-limit is set without inspect-response")
    );
    let mut f = fwd();
    f.inspect_response = true;
    assert!(check(f).unwrap_err().contains("response-hook"));
}
