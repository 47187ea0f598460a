//! The terminator's certificate choice and file handling.

use super::*;
use crate::config::CertFile;

fn write_pair(dir: &Path, names: &[&str]) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), ck.signing_key.serialize_pem()).unwrap();
}

fn settings(dir: &Path) -> ListenerTls {
    ListenerTls {
        certs: vec![CertFile {
            cert: dir.join("c.pem"),
            key: dir.join("c.key"),
        }],
        default: None,
        unknown_sni: UnknownSni::Default,
        client_ca: None,
        client_auth: ClientAuth::Required,
        check_host: true,
        handshake_timeout: std::time::Duration::from_secs(1),
    }
}

#[test]
fn reload_takes_a_good_set_and_refuses_a_broken_one_once() {
    let dir = std::env::temp_dir().join(format!("sy-tls-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_pair(&dir, &["a.test"]);
    let t = Terminator::new("web", &settings(&dir)).unwrap();
    assert_eq!(t.reload(), Ok(false), "nothing changed");
    std::fs::write(dir.join("c.pem"), "not a certificate").unwrap();
    let err = t.reload().unwrap_err();
    assert!(err.contains("listeners.web.tls.certs[0].cert"), "{err}");
    assert_eq!(
        t.reload(),
        Ok(false),
        "the same broken set is reported once"
    );
    write_pair(&dir, &["a.test", "*.b.test"]);
    assert_eq!(t.reload(), Ok(true));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names_come_from_the_subject_alternative_names() {
    let ck = rcgen::generate_simple_self_signed(vec!["A.test".into(), "*.w.test".into()]).unwrap();
    assert_eq!(names_of(ck.cert.der()), ["a.test", "*.w.test"]);
}

#[test]
fn exact_names_win_over_wildcards_and_unknown_names_get_the_default() {
    let key = |names: &[&str]| {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).unwrap();
        let signing = provider().key_provider.load_private_key(der).unwrap();
        Arc::new(CertifiedKey::new(vec![ck.cert.der().clone()], signing))
    };
    let (exact, wild, fallback) = (key(&["x.w.test"]), key(&["*.w.test"]), key(&["d.test"]));
    let mut by = ByName::default();
    by.add(&exact);
    by.add(&wild);
    by.default = Some(fallback.clone());
    assert!(Arc::ptr_eq(&by.pick(Some("X.w.test")).unwrap(), &exact));
    assert!(Arc::ptr_eq(&by.pick(Some("y.w.test")).unwrap(), &wild));
    assert!(Arc::ptr_eq(
        &by.pick(Some("a.y.w.test")).unwrap(),
        &fallback
    ));
    assert!(Arc::ptr_eq(&by.pick(None).unwrap(), &fallback));
    by.default = None;
    assert!(by.pick(Some("nope.test")).is_none());
}
