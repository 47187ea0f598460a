//! TLS with rustls and one crypto provider, chosen here (ring): termination
//! on HTTP listeners (certificates chosen by SNI from the names in the
//! certificates themselves, ALPN `h2`/`http/1.1`, optional client
//! certificates, reload from disk that keeps the last good set), and the
//! client configuration for pools that speak TLS to their backends. PEM is
//! read with `rustls-pki-types`' `PemObject`; certificate names and
//! subjects with `x509-parser`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::config::{CertFile, ClientAuth, ListenerTls, PoolTls, UnknownSni};

/// TLS 1.2 and 1.3 only.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The process's one crypto provider. Passed explicitly everywhere, so no
/// process default is needed (with two providers compiled in and none
/// installed, rustls would panic).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// What a TLS connection told, for the policy and the 421 check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: Option<String>,
    pub client_subject: Option<String>,
}

impl TlsFacts {
    pub fn of(conn: &rustls::ServerConnection) -> TlsFacts {
        TlsFacts {
            sni: conn.server_name().map(str::to_ascii_lowercase),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: conn.protocol_version().map(|v| {
                match v {
                    rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                    rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                    _ => "other",
                }
                .to_owned()
            }),
            client_subject: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
                .map(|(_, cert)| cert.subject().to_string()),
        }
    }
}

/// The files of a TLS setting, read once per load.
struct Files(HashMap<std::path::PathBuf, Vec<u8>>);

impl Files {
    /// Reads each file; an error names the file's config key.
    fn read(paths: &[(&Path, String)]) -> Result<Files, String> {
        let mut files = HashMap::new();
        for (p, key) in paths {
            let bytes =
                std::fs::read(p).map_err(|e| format!("{key}: cannot read {}: {e}", p.display()))?;
            files.insert(p.to_path_buf(), bytes);
        }
        Ok(Files(files))
    }

    fn get(&self, p: &Path) -> &[u8] {
        self.0.get(p).map(Vec::as_slice).unwrap_or_default()
    }

    /// A digest of every file, in path order: what changed on disk.
    fn fingerprint(&self) -> [u8; 32] {
        let mut paths: Vec<_> = self.0.keys().collect();
        paths.sort();
        let mut h = Sha256::new();
        for p in paths {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(&self.0[p]);
            h.update([0]);
        }
        h.finalize().into()
    }
}

fn certs_from_pem(
    pem: &[u8],
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {}: not a PEM certificate: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{key}: {}: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(chain)
}

fn private_key(files: &Files, path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(files.get(path))
        .map_err(|e| format!("{key}: {}: not a PEM private key: {e}", path.display()))
}

/// The CA certificates of a PEM file, as trust roots.
fn roots(files: &Files, path: &Path, key: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(files.get(path), path, key)? {
        roots
            .add(cert)
            .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(pair: &CertFile, files: &Files, key: &str) -> Result<CertifiedKey, String> {
    let chain = certs_from_pem(files.get(&pair.cert), &pair.cert, &format!("{key}.cert"))?;
    let der = private_key(files, &pair.key, &format!("{key}.key"))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{key}.key: {}: {e}", pair.key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{key}: {} is not the key of {} ({e})",
            pair.key.display(),
            pair.cert.display()
        )
    })?;
    Ok(ck)
}

/// The DNS names a certificate serves: its subject alternative names, or
/// its common name when it has none. Lower-case; `*.x` for wildcards.
pub fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let san: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !san.is_empty() {
        return san;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Certificates by the names in them.
#[derive(Debug, Default)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.test` under `example.test`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI or with a name no certificate has; `None`
    /// refuses them (`unknown_sni = "reject"`).
    default: Option<Arc<CertifiedKey>>,
}

impl ByName {
    fn add(&mut self, ck: &Arc<CertifiedKey>) -> usize {
        let names = ck.cert.first().map(names_of).unwrap_or_default();
        for n in &names {
            // The first certificate listed for a name wins.
            match n.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()),
                None => self.exact.entry(n.clone()),
            }
            .or_insert_with(|| ck.clone());
        }
        names.len()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The TLS side of one HTTP listener. Its rustls configuration is swapped
/// whole when the files change; handshakes in progress finish on the old.
pub struct Terminator {
    listener: String,
    pub settings: ListenerTls,
    config: ArcSwap<rustls::ServerConfig>,
    /// Digests of the files now serving, and of the last set refused (so
    /// a broken file is reported once, not at every unrelated event).
    fingerprint: Mutex<([u8; 32], Option<[u8; 32]>)>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    /// Loads every file of `settings`; an error names the key and file.
    pub fn new(listener: &str, settings: &ListenerTls) -> Result<Terminator, String> {
        let files = read_files(listener, settings)?;
        let config = configure(listener, settings, &files)?;
        Ok(Terminator {
            listener: listener.to_owned(),
            settings: settings.clone(),
            config: ArcSwap::from_pointee(config),
            fingerprint: Mutex::new((files.fingerprint(), None)),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Reads the files again. `Ok(true)`: they changed and new handshakes
    /// use them; `Ok(false)`: nothing changed; `Err`: a file is broken and
    /// the last good set keeps serving.
    pub fn reload(&self) -> Result<bool, String> {
        let files = read_files(&self.listener, &self.settings)?;
        let fingerprint = files.fingerprint();
        let mut known = self.fingerprint.lock().expect("fingerprint lock");
        let (serving, refused) = *known;
        if fingerprint == serving || Some(fingerprint) == refused {
            return Ok(false);
        }
        match configure(&self.listener, &self.settings, &files) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *known = (fingerprint, None);
                Ok(true)
            }
            Err(e) => {
                known.1 = Some(fingerprint);
                Err(e)
            }
        }
    }

    /// Every file this listener's TLS reads (for the watcher).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let s = &self.settings;
        s.certs
            .iter()
            .chain(s.default.iter())
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .chain(s.client_ca.iter().cloned())
            .collect()
    }
}

/// Every file of a listener's TLS settings, read (not parsed).
fn read_files(listener: &str, s: &ListenerTls) -> Result<Files, String> {
    let key = format!("listeners.{listener}.tls");
    let mut paths: Vec<(&Path, String)> = Vec::new();
    for (i, c) in s.certs.iter().enumerate() {
        paths.push((&c.cert, format!("{key}.certs[{i}].cert")));
        paths.push((&c.key, format!("{key}.certs[{i}].key")));
    }
    if let Some(d) = &s.default {
        paths.push((&d.cert, format!("{key}.default.cert")));
        paths.push((&d.key, format!("{key}.default.key")));
    }
    if let Some(ca) = &s.client_ca {
        paths.push((ca, format!("{key}.client_ca")));
    }
    Files::read(&paths)
}

/// The rustls configuration of a listener from its files.
fn configure(
    listener: &str,
    s: &ListenerTls,
    files: &Files,
) -> Result<rustls::ServerConfig, String> {
    let key = format!("listeners.{listener}.tls");
    let mut by_name = ByName::default();
    let mut first = None;
    for (i, c) in s.certs.iter().enumerate() {
        let k = format!("{key}.certs[{i}]");
        let ck = Arc::new(certified_key(c, files, &k)?);
        if by_name.add(&ck) == 0 {
            return Err(format!(
                "{k}.cert: {}: the certificate names no DNS name (subject alternative names or common name)",
                c.cert.display()
            ));
        }
        first.get_or_insert(ck);
    }
    let default = match &s.default {
        Some(d) => Some(Arc::new(certified_key(
            d,
            files,
            &format!("{key}.default"),
        )?)),
        None => first,
    };
    by_name.default = match s.unknown_sni {
        UnknownSni::Default => default,
        UnknownSni::Reject => None,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("{key}: {e}"))?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let k = format!("{key}.client_ca");
            let roots = roots(files, ca, &k)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match s.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("{k}: {}: {e}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(by_name));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls client configuration of a pool with `tls = true`. ALPN is
/// set by the connector (`h2` or `http/1.1`, as the pool speaks).
pub fn client_config(pool: &str, tls: &PoolTls) -> Result<rustls::ClientConfig, String> {
    let key = format!("pools.{pool}");
    let roots = match &tls.ca {
        Some(ca) => {
            let k = format!("{key}.ca");
            roots(&Files::read(&[(ca, k.clone())])?, ca, &k)?
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "{key}: no ca given and no system root certificates found ({} errors)",
                    found.errors.len()
                ));
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("{key}: {e}"))?
        .with_root_certificates(roots);
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some(pair) => {
            let (cert_key, key_key) = (format!("{key}.client_cert"), format!("{key}.client_key"));
            let files =
                Files::read(&[(&pair.cert, cert_key.clone()), (&pair.key, key_key.clone())])?;
            let chain = certs_from_pem(files.get(&pair.cert), &pair.cert, &cert_key)?;
            let der = private_key(&files, &pair.key, &key_key)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| format!("{key}.client_key: {e}"))
        }
    }
}

#[cfg(test)]
mod tests;
