//! TLS to PostgreSQL: a cluster with `ssl = on` and a CA and server certificate made by
//! the test (openssl), reachable over TCP only through `hostssl` lines with a password.
//! backupctl's own connections and its child programs (pg_dump, pg_dumpall, pg_restore)
//! must honour `sslmode` with libpq's meaning, and refuse what they cannot honour.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{backupctl, openssl, stderr, stdout, Backend, Cluster, ClusterOptions, TestRepo};

/// A CA, a server certificate it signed for `localhost` (and nothing else), and an
/// unrelated CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

fn make_pki() -> Pki {
    let dir = common::pg_tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    common::chown_to_pg(d);
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    Pki {
        ca: d.join("ca.crt"),
        other_ca: d.join("other-ca.crt"),
        server_crt: d.join("server.crt"),
        server_key: d.join("server.key"),
        _dir: dir,
    }
}

const PASSWORD: &str = "tls-test-password";

/// A cluster on 127.0.0.1 that accepts TCP connections only over TLS with a password
/// (`hostssl … scram-sha-256`), or, with `pki = None`, a plaintext one (`ssl = off`).
/// `None` when this PostgreSQL build has no TLS support (some embedded builds).
fn tcp_cluster(pki: Option<&Pki>, archive_command: Option<String>) -> Option<Cluster> {
    let mut cluster = Cluster::new(ClusterOptions {
        archive_command,
        conf: vec!["listen_addresses = '127.0.0.1'".to_string()],
        ..Default::default()
    });
    if let Some(p) = pki {
        if cluster.psql("postgres", "SHOW ssl_library").is_empty() {
            eprintln!("skipped: this PostgreSQL build has no TLS support (ssl_library is empty)");
            return None;
        }
        // The client programs (pg_dump…) may come from another build, without TLS.
        let probe = Command::new(common::pg_bin("psql"))
            .args(["-d", "host=127.0.0.1 port=1 sslmode=require", "-c", ""])
            .output()
            .expect("run psql");
        if String::from_utf8_lossy(&probe.stderr).contains("not compiled in") {
            eprintln!("skipped: these client programs have no TLS support");
            return None;
        }
        let mut conf = std::fs::read_to_string(cluster.pgdata.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            p.server_crt.display(),
            p.server_key.display()
        ));
        std::fs::write(cluster.pgdata.join("postgresql.conf"), conf).unwrap();
        cluster.stop();
        cluster.start();
    }
    cluster.psql(
        "postgres",
        &format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"),
    );
    let tcp = if pki.is_some() {
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    } else {
        "host all all 127.0.0.1/32 scram-sha-256\n"
    };
    std::fs::write(
        cluster.pgdata.join("pg_hba.conf"),
        format!("local all all trust\nlocal replication all trust\n{tcp}"),
    )
    .unwrap();
    cluster.psql_reload();
    Some(cluster)
}

/// `[postgres]` reaching `cluster` over TCP at `host`, with `tls` lines added.
fn postgres_toml(t: &TestRepo, cluster: &Cluster, host: &str, tls: &str) -> String {
    let pw = t.dir.path().join("pgpassword");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    common::chown_to_pg(&pw);
    format!(
        "[postgres]\nhost = \"{host}\"\nport = {}\nuser = \"postgres\"\ndbname = \"postgres\"\n\
         password_file = \"{}\"\n{}pgdata = \"{}\"\n{tls}\n",
        cluster.port,
        pw.display(),
        common::bin_toml(),
        cluster.pgdata.display()
    )
}

#[test]
fn verify_full_backs_up_physical_and_logical_over_tls() {
    let pki = make_pki();
    let t = TestRepo::new(Backend::Local);
    let config = t.write_config("backup.toml", "");
    let Some(cluster) = tcp_cluster(Some(&pki), Some(common::archive_command(&config))) else {
        return;
    };
    cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let tls = format!(
        "sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
        pki.ca.display()
    );
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "localhost", &tls),
    );

    let out = backupctl(&config, &["check", "--init"]);
    let text = stdout(&out);
    let line = common::check_line(&text, "OK   postgres");
    assert!(
        line.contains("sslmode=verify-full") && line.contains("TLS TLSv1."),
        "{text}\n{}",
        stderr(&out)
    );

    // pg_hba.conf lets TCP in only over TLS with the password: pg_dump and pg_dumpall
    // got both (the password through a private PGPASSFILE).
    let out = backupctl(&config, &["backup", "--kind", "logical"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = backupctl(&config, &["backup", "--kind", "physical"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(!stderr(&out).contains(PASSWORD));

    // The same through `postgres.connection`, whose sslmode tokio-postgres alone would
    // not accept.
    let conn = format!(
        "[postgres]\nconnection = \"host=localhost port={} user=postgres dbname=postgres \
         sslmode=verify-full sslrootcert={}\"\npassword_file = \"{}\"\n{}",
        cluster.port,
        pki.ca.display(),
        t.dir.path().join("pgpassword").display(),
        common::bin_toml(),
    );
    let config = t.write_config("conn.toml", &conn);
    let out = backupctl(
        &config,
        &["backup", "--kind", "logical", "--no-verify", "--json"],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["backups"][0]["id"].as_str().unwrap().to_string();

    // A restore of it into a new database, over TLS too (pg_restore).
    let out = backupctl(
        &config,
        &[
            "restore",
            "--logical",
            &id,
            "--database",
            "postgres",
            "--dbname",
            "restored",
            "--create",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(cluster.psql("restored", "SELECT count(*) FROM t"), "1000");
}

#[test]
fn what_cannot_be_verified_is_refused_naming_the_fix() {
    let pki = make_pki();
    let t = TestRepo::new(Backend::Local);
    let Some(cluster) = tcp_cluster(Some(&pki), None) else {
        return;
    };

    // A CA that did not sign the server's certificate.
    let wrong = format!(
        "sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
        pki.other_ca.display()
    );
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "localhost", &wrong),
    );
    let out = backupctl(&config, &["check"]);
    let line = common::check_line(&stdout(&out), "FAIL postgres");
    assert!(
        line.contains("not signed by a CA in") && line.contains("other-ca.crt"),
        "{line}"
    );
    let out = backupctl(&config, &["backup", "--kind", "logical"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("postgres.sslrootcert"),
        "{}",
        stderr(&out)
    );

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca
    // (chain only, as in libpq) accepts.
    for (mode, ok) in [("verify-full", false), ("verify-ca", true)] {
        let tls = format!(
            "sslmode = \"{mode}\"\nsslrootcert = \"{}\"\n",
            pki.ca.display()
        );
        let config = t.write_config(
            "backup.toml",
            &postgres_toml(&t, &cluster, "127.0.0.1", &tls),
        );
        let out = backupctl(&config, &["check"]);
        let text = stdout(&out);
        if ok {
            let line = common::check_line(&text, "OK   postgres");
            assert!(line.contains("TLS TLSv1."), "{line}");
        } else {
            let line = common::check_line(&text, "FAIL postgres");
            assert!(line.contains("does not name 127.0.0.1"), "{line}");
        }
    }

    // verify-full without any root certificate cannot be honoured: refused up front.
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "localhost", "sslmode = \"verify-full\"\n"),
    );
    let out = backupctl(&config, &["backup", "--kind", "logical"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no root certificate is set"),
        "{}",
        stderr(&out)
    );

    // sslmode=disable against hostssl-only pg_hba.conf: the server turns it away...
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "localhost", "sslmode = \"disable\"\n"),
    );
    let out = backupctl(&config, &["check"]);
    let line = common::check_line(&stdout(&out), "FAIL postgres");
    assert!(
        line.contains("no encryption") && line.contains("only over TLS"),
        "{line}"
    );
    // ...and allow (plaintext first) retries with TLS.
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "localhost", "sslmode = \"allow\"\n"),
    );
    let out = backupctl(&config, &["check"]);
    let line = common::check_line(&stdout(&out), "OK   postgres");
    assert!(
        line.contains("TLS TLSv1.") && line.contains("not verified"),
        "{line}"
    );
}

#[test]
fn require_against_a_plaintext_server_is_refused() {
    let t = TestRepo::new(Backend::Local);
    let cluster = tcp_cluster(None, None).expect("a plaintext cluster");
    let config = t.write_config(
        "backup.toml",
        &postgres_toml(&t, &cluster, "127.0.0.1", "sslmode = \"require\"\n"),
    );
    let out = backupctl(&config, &["check"]);
    assert!(!out.status.success());
    let line = common::check_line(&stdout(&out), "FAIL postgres");
    assert!(
        line.contains("does not accept TLS") && line.contains("sslmode=require"),
        "{line}"
    );
    for kind in ["logical", "physical"] {
        let out = backupctl(&config, &["backup", "--kind", kind]);
        assert!(!out.status.success(), "{kind}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("does not accept TLS"),
            "{kind}: {}",
            stderr(&out)
        );
    }
    let out = backupctl(&config, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        list["backups"].as_array().is_none_or(|b| b.is_empty()),
        "{list}"
    );

    // The default (prefer) falls back to plaintext, and check says so.
    let config = t.write_config("backup.toml", &postgres_toml(&t, &cluster, "127.0.0.1", ""));
    let out = backupctl(&config, &["check"]);
    let line = common::check_line(&stdout(&out), "OK   postgres");
    assert!(
        line.contains("not encrypted: the server offered no TLS (sslmode=prefer)"),
        "{line}"
    );
}
