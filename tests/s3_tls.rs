//! An S3 repository over TLS with a private CA (`repository.ca_file`): s3s-fs behind a
//! TLS terminator whose certificate a CA made here signed. With the CA trusted, a
//! backup, its listing and its test restore (wal-fetch included) go through TLS; without
//! it the connection is refused naming the certificate; a file that is not a PEM
//! certificate is refused naming the key.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::setup::Setup;
use common::{backupctl, chown_to_pg, free_port, openssl, stderr, stdout, Backend};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A CA and a server certificate for 127.0.0.1 it signed, in `dir`:
/// `ca.pem`, `server.pem`, `server.key`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=backupctl test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "server.pem",
        ],
    );
    chown_to_pg(&dir.join("ca.pem"));
}

/// A TLS terminator on a free loopback port forwarding to `upstream`; runs until the
/// test process ends.
fn tls_terminator(dir: &Path, upstream: u16) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let port = free_port();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing
                    // to forward.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    ready_rx.recv().unwrap();
    port
}

/// The setup's config with its S3 endpoint replaced by `endpoint` and `extra` keys in
/// `[repository]`, written as `name`.
fn config_via(s: &Setup, name: &str, endpoint: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let plain = s.t.s3.as_ref().unwrap().endpoint();
    let text = text.replacen(
        &format!("endpoint = \"{plain}\"\n"),
        &format!("endpoint = \"{endpoint}\"\n{extra}"),
        1,
    );
    let path = s.t.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    chown_to_pg(&path);
    path
}

#[test]
fn a_private_ca_is_trusted_with_ca_file_and_refused_without() {
    let s = Setup::new(Backend::S3);
    let tls = common::pg_tempdir();
    certificates(tls.path());
    let port = tls_terminator(tls.path(), s.t.s3.as_ref().unwrap().port);
    let endpoint = format!("https://127.0.0.1:{port}");
    let ca = tls.path().join("ca.pem");
    let trusted = config_via(
        &s,
        "tls.toml",
        &endpoint,
        &format!("ca_file = \"{}\"\n", ca.display()),
    );

    s.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let out = backupctl(&trusted, &["backup", "--kind", "physical"]);
    assert!(
        out.status.success(),
        "backup over TLS: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = stdout(&out).trim().to_string();
    let out = backupctl(&trusted, &["list"]);
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = backupctl(&trusted, &["verify", &id]);
    assert!(
        out.status.success(),
        "verify over TLS: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // The system roots alone do not know the CA.
    let untrusted = config_via(&s, "untrusted.toml", &endpoint, "");
    let out = backupctl(&untrusted, &["list"]);
    assert!(!out.status.success(), "an unknown CA was trusted");
    let err = stderr(&out);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "the refusal does not name the certificate: {err}"
    );

    // A file that is no PEM certificate.
    let bogus = tls.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    chown_to_pg(&bogus);
    let bad = config_via(
        &s,
        "bad.toml",
        &endpoint,
        &format!("ca_file = \"{}\"\n", bogus.display()),
    );
    let out = backupctl(&bad, &["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("repository.ca_file") && stderr(&out).contains("no PEM certificate"),
        "{}",
        stderr(&out)
    );
}
