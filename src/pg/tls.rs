//! TLS to PostgreSQL, with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, for backupctl's own connections (rustls, through tokio-postgres-rustls) and
//! for the child programs (pg_dump, pg_restore, psql: through the libpq environment).
//!
//! Each setting comes from the `[postgres]` key, else from `postgres.connection`, else
//! from libpq's environment variable (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
//! `PGSSLKEY`), else from libpq's default: `sslmode = prefer`, and the files under
//! `~/.postgresql/` when they exist. As in libpq:
//! - a Unix-socket host never uses TLS, whatever the mode;
//! - `verify-ca` and `verify-full` need a root certificate and refuse to start without one;
//! - `prefer`, `require` and `allow` check the certificate's chain only when a root
//!   certificate is there, and never the host name; `verify-full` checks both.
//!
//! A value that cannot be honoured is refused with the key that set it, never dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{PostgresConfig, SslMode};

/// The TLS settings written in a connection string, before precedence is applied.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConnStringTls {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl ConnStringTls {
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "sslmode" => Some(&mut self.sslmode),
            "sslrootcert" => Some(&mut self.sslrootcert),
            "sslcert" => Some(&mut self.sslcert),
            "sslkey" => Some(&mut self.sslkey),
            _ => None,
        }
    }
}

/// Take the TLS settings out of a libpq connection string (keyword/value or
/// `postgresql://` URI form) and return the rest, which tokio-postgres parses (it knows
/// `sslmode` only up to `require`, and no certificate files).
pub fn split_conn_string(conn: &str) -> Result<(String, ConnStringTls), String> {
    let mut tls = ConnStringTls::default();
    let uri = conn.starts_with("postgresql://") || conn.starts_with("postgres://");
    if uri {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            match tls.slot(&key) {
                Some(slot) => {
                    let value = percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .map_err(|_| format!("{key}: not UTF-8 after percent-decoding"))?;
                    *slot = Some(value.into_owned());
                }
                None => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    // Keyword/value: `key = value` pairs separated by whitespace; a value is either
    // single-quoted (`\'` and `\\` escaped) or runs to the next whitespace (backslash
    // escapes the next character).
    let b = conn.as_bytes();
    let mut rest = String::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conn[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            // The word itself is not quoted: it may be the tail of an unquoted password.
            return Err(format!(
                "missing \"=\" after the word at offset {start} (quote values that hold spaces: key='a b')"
            ));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        match tls.slot(key) {
            Some(slot) => {
                *slot = Some(String::from_utf8(value).map_err(|_| format!("{key}: not UTF-8"))?)
            }
            None => {
                rest.push_str(&conn[start..i]);
                rest.push(' ');
            }
        }
    }
    Ok((rest.trim_end().to_string(), tls))
}

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted roots.
    System,
}

/// TLS settings after precedence and defaults, checked for what can be honoured.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub rootcert: Option<RootCert>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// libpq's per-user directory of TLS files.
fn home_file(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env("HOME")?).join(".postgresql").join(name);
    p.is_file().then_some(p)
}

/// One setting: the `[postgres]` key, else the connection string, else the environment;
/// with the name of the place it came from, for messages.
fn pick(
    key: Option<String>,
    conn: &Option<String>,
    env_name: &'static str,
    key_name: &'static str,
) -> Option<(String, String)> {
    key.map(|v| (v, format!("postgres.{key_name}")))
        .or_else(|| {
            conn.clone()
                .map(|v| (v, format!("{key_name} in postgres.connection")))
        })
        .or_else(|| env(env_name).map(|v| (v, env_name.to_string())))
}

fn existing_file(path: PathBuf, source: &str, what: &str) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(crate::user_error!(
            "{source} names {what} {}, which is not a readable file; point it at the PEM file",
            path.display()
        ))
    }
}

impl TlsSettings {
    /// No TLS at all (`sslmode=disable`).
    pub fn none() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            rootcert: None,
            client: None,
        }
    }

    pub fn resolve(cfg: &PostgresConfig, conn: &ConnStringTls) -> anyhow::Result<TlsSettings> {
        let path_str = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mode = match pick(
            cfg.sslmode.map(|m| m.as_str().to_string()),
            &conn.sslmode,
            "PGSSLMODE",
            "sslmode",
        ) {
            Some((v, source)) => v
                .parse::<SslMode>()
                .map_err(|e| crate::user_error!("{source}: {e}"))?,
            None => SslMode::default(),
        };
        let rootcert = match pick(
            path_str(&cfg.sslrootcert),
            &conn.sslrootcert,
            "PGSSLROOTCERT",
            "sslrootcert",
        ) {
            Some((v, _)) if v == "system" => Some(RootCert::System),
            Some((v, source)) => Some(RootCert::File(existing_file(
                PathBuf::from(v),
                &source,
                "the root certificate",
            )?)),
            None => home_file("root.crt").map(RootCert::File),
        };
        if rootcert.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(crate::user_error!(
                "sslmode={} verifies the server's certificate, but no root certificate is set \
                 and ~/.postgresql/root.crt does not exist; set postgres.sslrootcert to the CA \
                 file that signed the server's certificate (or \"system\" for the OS's roots)",
                mode.as_str()
            ));
        }
        let cert = pick(
            path_str(&cfg.sslcert),
            &conn.sslcert,
            "PGSSLCERT",
            "sslcert",
        );
        let key = pick(path_str(&cfg.sslkey), &conn.sslkey, "PGSSLKEY", "sslkey");
        let client = match (cert, key) {
            (Some((c, cs)), Some((k, ks))) => Some((
                existing_file(PathBuf::from(c), &cs, "the client certificate")?,
                existing_file(PathBuf::from(k), &ks, "the client key")?,
            )),
            (Some((c, cs)), None) => match home_file("postgresql.key") {
                Some(k) => Some((
                    existing_file(PathBuf::from(c), &cs, "the client certificate")?,
                    k,
                )),
                None => {
                    return Err(crate::user_error!(
                        "{cs} sets a client certificate without its key; set postgres.sslkey too"
                    ))
                }
            },
            (None, Some((_, source))) => {
                return Err(crate::user_error!(
                    "{source} sets a client key without its certificate; set postgres.sslcert too"
                ))
            }
            (None, None) => home_file("postgresql.crt").zip(home_file("postgresql.key")),
        };
        Ok(TlsSettings {
            mode,
            rootcert,
            client,
        })
    }

    /// What a connection to `host` does, in words, for `check` and messages.
    pub fn describe(&self, host: &str) -> String {
        if host.starts_with('/') {
            return "no TLS (Unix socket)".into();
        }
        let roots = match &self.rootcert {
            Some(RootCert::File(p)) => format!("CA {}", p.display()),
            Some(RootCert::System) => "the system's CAs".into(),
            None => String::new(),
        };
        match self.mode {
            SslMode::Disable => "sslmode=disable: no TLS".into(),
            SslMode::VerifyFull => format!(
                "sslmode=verify-full: TLS, certificate checked against {roots} and host {host}"
            ),
            m if roots.is_empty() => {
                format!(
                    "sslmode={}: certificate not verified (no root certificate)",
                    m.as_str()
                )
            }
            m => format!(
                "sslmode={}: certificate checked against {roots}",
                m.as_str()
            ),
        }
    }

    /// libpq's environment for child programs, so they connect as backupctl does.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("PGSSLMODE", self.mode.as_str().to_string())];
        match &self.rootcert {
            Some(RootCert::File(p)) => v.push(("PGSSLROOTCERT", p.display().to_string())),
            // libpq before 16 reads "system" as a file name; the system's CA bundle is
            // the same trust for every libpq version (16+ reads it through "system").
            Some(RootCert::System) => v.push((
                "PGSSLROOTCERT",
                system_ca_bundle()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| "system".into()),
            )),
            None => {}
        }
        if let Some((c, k)) = &self.client {
            v.push(("PGSSLCERT", c.display().to_string()));
            v.push(("PGSSLKEY", k.display().to_string()));
        }
        v
    }

    /// The rustls client configuration these settings stand for.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = match &self.rootcert {
            None => None,
            Some(root) => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(root_store(root)?),
                    provider.clone(),
                )
                .build()
                .context("build the certificate verifier")?,
            ),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match chain {
            Some(webpki) if self.mode == SslMode::VerifyFull => webpki,
            chain => Arc::new(LibpqPolicy {
                chain,
                provider: provider.clone(),
            }),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        Ok(match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        crate::user_error!(
                            "client certificate {}: not a PEM certificate: {e}",
                            cert.display()
                        )
                    })?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    crate::user_error!("client key {}: not a PEM private key: {e}", key.display())
                })?;
                builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                    crate::user_error!(
                        "client certificate {} and key {} do not go together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
        })
    }
}

fn root_store(root: &RootCert) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    crate::user_error!(
                        "root certificate {}: not a PEM certificate file: {e}",
                        path.display()
                    )
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(crate::user_error!(
                    "root certificate {} holds no usable certificate; point sslrootcert at the \
                     PEM file of the CA that signed the server's certificate",
                    path.display()
                ));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(crate::user_error!(
                    "sslrootcert=system: no trusted root certificates found on this system \
                     (install ca-certificates, or point sslrootcert at a CA file)"
                ));
            }
        }
    }
    Ok(store)
}

/// Every mode but `verify-full`: the chain is checked against the root certificates
/// when there are some (`verify-ca`, and `prefer`/`require`/`allow` with a root
/// certificate), the host name never, as in libpq; without root certificates the
/// connection is encrypted but the server not authenticated. The handshake's signatures
/// are always checked, so the session is bound to the certificate the server presented.
#[derive(Debug)]
struct LibpqPolicy {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqPolicy {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The fix for a connection error caused by TLS, or `None` when TLS is not the cause.
pub fn explain(error_text: &str, settings: &TlsSettings, host: &str) -> Option<String> {
    let roots = match &settings.rootcert {
        Some(RootCert::File(p)) => p.display().to_string(),
        Some(RootCert::System) => "the system's CAs (sslrootcert=system)".into(),
        None => "no root certificate".into(),
    };
    if error_text.contains("server does not support TLS") {
        Some(format!(
            "the server does not accept TLS (ssl = off), and sslmode={} requires it; turn ssl \
             on in the server, or set postgres.sslmode = \"prefer\" only if plaintext to {host} \
             is acceptable",
            settings.mode.as_str()
        ))
    } else if error_text.contains("UnknownIssuer") || error_text.contains("BadSignature") {
        Some(format!(
            "the server's certificate is not signed by a CA in {roots}; set postgres.sslrootcert \
             to the CA that signed it"
        ))
    } else if error_text.contains("not valid for name") || error_text.contains("NotValidForName") {
        Some(format!(
            "the server's certificate does not name {host} (sslmode=verify-full); connect by a \
             name the certificate lists, or reissue it with {host} in its subjectAltName"
        ))
    } else if error_text.contains("Expired") || error_text.contains("NotValidYet") {
        Some("the server's certificate is outside its validity period; renew it".into())
    } else if error_text.contains("no pg_hba.conf entry") && error_text.contains("no encryption") {
        Some(format!(
            "the server accepts {host} only over TLS (pg_hba.conf hostssl), and sslmode={} \
             sent plaintext; set postgres.sslmode = \"verify-full\" (or \"require\")",
            settings.mode.as_str()
        ))
    } else if error_text.contains("no hostname provided for TLS") {
        Some(format!("TLS needs a host name; {host} is not one"))
    } else {
        None
    }
}

/// Whether `host` is a Unix-socket directory (libpq: an absolute path).
pub fn is_unix_socket(host: &str) -> bool {
    Path::new(host).is_absolute()
}

/// The operating system's CA bundle file, where OpenSSL looks for it (`SSL_CERT_FILE`
/// first), for client programs whose libpq does not know `sslrootcert=system`.
fn system_ca_bundle() -> Option<std::path::PathBuf> {
    openssl_probe::probe().cert_file.filter(|f| f.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, ConnStringTls) {
        split_conn_string(s).unwrap()
    }

    #[test]
    fn keyword_value_strings_lose_only_their_tls_settings() {
        let (rest, tls) = split(
            "host=db.example port=5432 sslmode=verify-full sslrootcert='/etc/ssl/my ca.pem' \
             user=app sslcert = /c.pem sslkey=/k\\ ey.pem password='it\\'s'",
        );
        assert_eq!(rest, r"host=db.example port=5432 user=app password='it\'s'");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ssl/my ca.pem"));
        assert_eq!(tls.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(tls.sslkey.as_deref(), Some("/k ey.pem"));
        // tokio-postgres accepts what is left.
        rest.parse::<tokio_postgres::Config>().unwrap();
        assert!(split_conn_string("host=x sslmode").is_err());
        assert!(split_conn_string("sslrootcert='/never/closed").is_err());
    }

    #[test]
    fn uris_lose_only_their_tls_settings() {
        let (rest, tls) = split(
            "postgresql://app@db.example:6432/sales?sslmode=verify-ca&connect_timeout=5&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgresql://app@db.example:6432/sales?connect_timeout=5"
        );
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        rest.parse::<tokio_postgres::Config>().unwrap();
        let (rest, _) = split("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
    }

    #[test]
    fn keys_beat_the_connection_string_and_verify_modes_need_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not used here").unwrap();
        let cfg = PostgresConfig {
            sslmode: Some(SslMode::VerifyCa),
            sslrootcert: Some(ca.clone()),
            ..Default::default()
        };
        let conn = ConnStringTls {
            sslmode: Some("disable".into()),
            ..Default::default()
        };
        let s = TlsSettings::resolve(&cfg, &conn).unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.rootcert, Some(RootCert::File(ca.clone())));
        assert!(s
            .libpq_env()
            .contains(&("PGSSLROOTCERT", ca.display().to_string())));

        // sslrootcert=system reaches pg_dump and psql as the CA bundle file (libpq before 16
        // reads "system" as a file name), where the system has one.
        let system = TlsSettings {
            rootcert: Some(RootCert::System),
            ..s.clone()
        };
        let root = system
            .libpq_env()
            .into_iter()
            .find(|(k, _)| *k == "PGSSLROOTCERT")
            .unwrap()
            .1;
        match system_ca_bundle() {
            Some(bundle) => assert_eq!(root, bundle.display().to_string()),
            None => assert_eq!(root, "system"),
        }

        // From the connection string, a mode tokio-postgres does not know is honoured...
        let conn = ConnStringTls {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some(dir.path().join("missing.pem").display().to_string()),
            ..Default::default()
        };
        // ...and a root certificate that is not there is refused, naming where it was set.
        let err = TlsSettings::resolve(&PostgresConfig::default(), &conn)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslrootcert in postgres.connection") && err.contains("missing.pem"),
            "{err}"
        );
        let conn = ConnStringTls {
            sslmode: Some("verify-full".into()),
            ..Default::default()
        };
        // (HOME has no ~/.postgresql/root.crt in the test environment's temp home.)
        if home_file("root.crt").is_none() {
            let err = TlsSettings::resolve(&PostgresConfig::default(), &conn)
                .unwrap_err()
                .to_string();
            assert!(err.contains("postgres.sslrootcert"), "{err}");
        }
        let conn = ConnStringTls {
            sslmode: Some("verify_full".into()),
            ..Default::default()
        };
        let err = TlsSettings::resolve(&PostgresConfig::default(), &conn)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not one of"), "{err}");
        let cfg = PostgresConfig {
            sslcert: Some(ca),
            ..Default::default()
        };
        let err = TlsSettings::resolve(&cfg, &ConnStringTls::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("without its key"), "{err}");
    }

    #[test]
    fn config_rejects_unknown_modes_by_name() {
        let err = crate::config::Config::parse("[postgres]\nsslmode = \"verify_full\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres.sslmode") && err.contains("verify-full"),
            "{err}"
        );
    }
}
