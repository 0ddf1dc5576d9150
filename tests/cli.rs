//! The binary's contract: help lists every command, bad config is one clear line with
//! exit 2, unimplemented commands say so with exit 2, and `check` reports honestly
//! against a real PostgreSQL cluster and both repository kinds.

mod common;

use std::process::Command;

use common::{
    backupctl, backupctl_bin, stderr, stdout, Backend, Cluster, ClusterOptions, TestRepo,
};

#[test]
fn help_lists_every_command() {
    let out = Command::new(backupctl_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for cmd in [
        "daemon",
        "backup",
        "restore",
        "wal-push",
        "wal-fetch",
        "list",
        "info",
        "verify",
        "check",
        "retention",
        "partitions",
        "archive",
        "restore-export",
    ] {
        assert!(help.contains(cmd), "--help does not mention {cmd}:\n{help}");
    }
}

/// aws-lc is built without its CPU-jitter entropy source (`.cargo/config.toml`): that
/// source costs each process about 50 ms of CPU on its first random number, the
/// first TLS handshake of every wal-push and wal-fetch call on S3. Losing the setting
/// would go unnoticed but for this.
#[test]
fn aws_lc_is_built_without_the_cpu_jitter_entropy_source() {
    let exe = std::fs::read(env!("CARGO_BIN_EXE_backupctl")).unwrap();
    assert!(
        memchr::memmem::find(&exe, b"RAND_bytes").is_some(),
        "the binary has no symbols to search; this test needs an unstripped build"
    );
    assert!(
        memchr::memmem::find(&exe, b"jent_entropy_init").is_none(),
        "aws-lc was built with CPU-jitter entropy: build with AWS_LC_SYS_NO_JITTER_ENTROPY=1 (.cargo/config.toml)"
    );
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    common::chown_to_pg(&p);
    p
}

/// (config text, key the error must name)
const BAD_CONFIGS: &[(&str, &str)] = &[
    (
        "[repository]\npath = \"/tmp/r\"\nbukket = \"x\"\n",
        "repository.bukket",
    ),
    ("[postgres]\nport = \"5432x\"\n", "postgres.port"),
    (
        "[repository]\ntype = \"s3\"\nprefix = \"pg/\"\n",
        "repository.bucket",
    ),
    ("[repository]\ntype = \"ftp\"\n", "repository.type"),
    (
        "[compression]\nalgorithm = \"zstd\"\nlevel = 99\n",
        "compression.level",
    ),
    (
        "[schedule]\nphysical = \"every day\"\n",
        "schedule.physical",
    ),
    (
        "[backup]\narchive_timeout = \"5 parsecs\"\n",
        "backup.archive_timeout",
    ),
    (
        "[[partitions]]\ntable = \"public.t\"\ninterval = \"weekly\"\n",
        "partitions[0].interval",
    ),
    ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
    ("not toml at all [[[\n", "line 1"),
];

#[test]
fn bad_config_is_one_line_naming_the_key_and_exit_2() {
    let dir = common::pg_tempdir();
    for (i, (text, key)) in BAD_CONFIGS.iter().enumerate() {
        let path = write(&dir, &format!("bad{i}.toml"), text);
        for args in [&["check"][..], &["list"][..]] {
            let out = backupctl(&path, args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
            assert!(
                err.contains(key),
                "error for {text:?} does not name {key}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
            assert!(
                err.contains(&path.display().to_string()) || !key.contains('.'),
                "{err}"
            );
        }
    }
}

#[test]
fn missing_config_file_is_exit_2() {
    let out = backupctl(std::path::Path::new("/nonexistent/backup.toml"), &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/backup.toml"));
}

fn check_with_cluster(backend: Backend) {
    let t = TestRepo::new(backend);
    let config = t.write_config("backup.toml", "");
    let cluster = Cluster::new(ClusterOptions {
        archive_command: Some(common::archive_command(&config)),
        ..Default::default()
    });
    let config = t.write_config("backup.toml", &cluster.postgres_toml());

    // Not initialised yet: a warning, not a failure.
    let out = backupctl(&config, &["check"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("OK   repository"), "{text}");
    assert!(text.contains("readable and writable"), "{text}");
    assert!(text.contains("OK   postgres"), "{text}");
    assert!(text.contains("PostgreSQL 15"), "{text}");
    assert!(text.contains("WARN repository identity"), "{text}");
    assert!(text.contains("check --init"), "{text}");
    assert!(text.contains("OK   archive_command"), "{text}");
    assert!(text.contains("OK   privileges"), "{text}");
    assert!(text.contains("OK   state_dir"), "{text}");
    // The end-to-end probe: a switched segment arrived in the repository.
    assert!(text.contains("OK   wal archiving"), "{text}");
    assert!(text.contains("reached the repository in"), "{text}");

    // --init writes repo.json with the server's system identifier.
    let out = backupctl(&config, &["check", "--init", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let sysid = cluster.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ident = rt.block_on(async {
        let repo = t.open().await;
        backupctl::repo::identity::RepoIdentity::load(repo.as_ref())
            .await
            .unwrap()
            .expect("repo.json written")
    });
    assert_eq!(ident.system_identifier, sysid);
    assert_eq!(ident.pg_major, 15);

    // A second, different cluster pointed at the same repository is refused.
    let other = Cluster::new(ClusterOptions::default());
    let other_config = t.write_config("other.toml", &other.postgres_toml());
    let out = backupctl(&other_config, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL repository identity"), "{text}");
    assert!(text.contains("FAIL archive_mode"), "{text}");
    assert!(text.contains("ALTER SYSTEM SET archive_mode"), "{text}");
}

#[test]
fn check_reports_a_healthy_setup_local() {
    check_with_cluster(Backend::Local);
}

#[test]
fn check_reports_a_healthy_setup_s3() {
    check_with_cluster(Backend::S3);
}

#[test]
fn check_fails_when_wal_goes_elsewhere_or_nowhere() {
    let t = TestRepo::new(Backend::Local);
    // Archives into another repository: judged from the settings, no probe needed.
    let other = t.write_config("other.toml", "");
    let other_text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("/repo\"", "/other-repo\"");
    std::fs::write(&other, other_text).unwrap();
    let cluster = Cluster::new(ClusterOptions {
        archive_command: Some(common::archive_command(&other)),
        ..Default::default()
    });
    let config = t.write_config(
        "backup.toml",
        &format!("{}\n[check]\ntimeout = \"3s\"\n", cluster.postgres_toml()),
    );
    let out = backupctl(&config, &["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL archive_command"), "{text}");
    assert!(text.contains("other-repo/main"), "{text}");
    assert!(text.contains("WARN wal archiving"), "{text}");
    drop(cluster);

    // Looks right but never archives: only the forced segment switch can tell.
    let cluster = Cluster::new(ClusterOptions {
        archive_command: Some(format!("false && {}", common::archive_command(&config))),
        ..Default::default()
    });
    let config = t.write_config(
        "backup.toml",
        &format!("{}\n[check]\ntimeout = \"3s\"\n", cluster.postgres_toml()),
    );
    let out = backupctl(&config, &["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("WARN archive_command"), "{text}");
    assert!(text.contains("compound shell command"), "{text}");
    assert!(text.contains("FAIL wal archiving"), "{text}");
    assert!(
        text.contains("did not reach the repository within 3s"),
        "{text}"
    );
    assert!(text.contains("pg_stat_archiver"), "{text}");
    assert!(text.contains("fix:"), "{text}");
}

#[test]
fn check_reports_what_it_cannot_reach() {
    let t = TestRepo::new(Backend::S3);
    // PostgreSQL: a socket directory with no server.
    let nothing = common::pg_tempdir();
    let pg = format!(
        "[postgres]\nhost = \"{}\"\nport = 5999\nbin_dir = \"/nonexistent/bin\"\n",
        nothing.path().display()
    );
    let config = t.write_config("c.toml", &pg);
    // S3: stop the server so the repository is unreachable too.
    let mut t = t;
    drop(t.s3.take());
    let out = backupctl(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL repository"), "{text}");
    assert!(text.contains("FAIL postgres"), "{text}");
    assert!(text.contains("FAIL binaries"), "{text}");
    assert!(text.contains("fix:"), "{text}");
    // The secret never appears.
    assert!(!text.contains(common::S3_SECRET_KEY) && !stderr(&out).contains(common::S3_SECRET_KEY));
    // repo.json could not be read (network): removing it would drop the guard against
    // mixing clusters, so that is never the advice.
    assert!(!text.contains("remove repo.json"), "{text}");
    // One short line per failure: the cause, not the SDK's dump of request and response.
    let repo_line = text
        .lines()
        .find(|l| l.contains("FAIL repository"))
        .unwrap();
    assert!(repo_line.len() < 400, "{repo_line}");
    for dump in [
        "DispatchFailure",
        "ConnectorError",
        "ErrorMetadata",
        "SdkBody",
        "extensions",
    ] {
        assert!(
            !text.contains(dump) && !stderr(&out).contains(dump),
            "{dump}:\n{text}\n{}",
            stderr(&out)
        );
    }
}

/// The line of `check`'s text report for `name`, with its fix.

#[test]
fn check_diagnoses_the_cause_not_a_guess() {
    let t = TestRepo::new(Backend::Local);
    let cluster = Cluster::new(ClusterOptions::default());

    // No [repository] and nothing at the default path: not "no backups". The default
    // path belongs to the machine, not to the test: where something already created it,
    // this part cannot run here (the refusal itself is also unit-tested in repo/mod.rs).
    let default = std::path::Path::new(backupctl::config::DEFAULT_LOCAL_REPOSITORY);
    if default.exists() {
        eprintln!(
            "skipped: the no-[repository] case needs {} to be absent on this machine",
            default.display()
        );
    } else {
        no_repository_is_named_not_read_as_empty(&t, &cluster);
    }
    identity_and_password_diagnoses(&t, &cluster);
}

fn no_repository_is_named_not_read_as_empty(t: &TestRepo, cluster: &Cluster) {
    let bare = t.dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        format!(
            "{}\n[backup]\nstate_dir = \"{}\"\n",
            cluster.postgres_toml(),
            t.dir.path().join("state").display()
        ),
    )
    .unwrap();
    common::chown_to_pg(&bare);
    let out = backupctl(&bare, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let line = common::check_line(&stdout(&out), "FAIL repository");
    assert!(
        line.contains("[repository]") && line.contains("repository.path"),
        "{line}"
    );
    for args in [&["list"][..], &["info"][..]] {
        let out = backupctl(&bare, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains("repository.path"), "{}", stderr(&out));
    }
}

fn identity_and_password_diagnoses(t: &TestRepo, cluster: &Cluster) {
    // repo.json that does not parse may be repaired; one that cannot be read must stay.
    let config = t.write_config("backup.toml", &cluster.postgres_toml());
    let repo_json = t.dir.path().join("repo/main/repo.json");
    std::fs::create_dir_all(repo_json.parent().unwrap()).unwrap();
    std::fs::write(&repo_json, "{ not json").unwrap();
    common::chown_to_pg(&t.dir.path().join("repo"));
    let line = common::check_line(
        &stdout(&backupctl(&config, &["check"])),
        "FAIL repository identity",
    );
    assert!(
        line.contains(&format!("repair {}", repo_json.display())),
        "{line}"
    );
    if common::pg_user().is_some() {
        // Root reads anything: only as the postgres user is the file unreadable.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&repo_json, std::fs::Permissions::from_mode(0o000)).unwrap();
        let line = common::check_line(
            &stdout(&backupctl(&config, &["check"])),
            "FAIL repository identity",
        );
        assert!(
            line.contains(&repo_json.display().to_string())
                && line.contains("do not remove")
                && !line.contains("repair"),
            "{line}"
        );
    }
    std::fs::remove_file(&repo_json).unwrap();

    // A wrong password: the fix is about the password, not about where the server is.
    cluster.psql("postgres", "ALTER ROLE postgres PASSWORD 'right-password'");
    std::fs::write(
        cluster.pgdata.join("pg_hba.conf"),
        "local all all scram-sha-256\n",
    )
    .unwrap();
    cluster.psql_reload();
    let wrong = t.dir.path().join("pgpassword");
    std::fs::write(&wrong, "wrong-password\n").unwrap();
    common::chown_to_pg(&wrong);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}password_file = \"{}\"\n",
            cluster.postgres_toml(),
            wrong.display()
        ),
    );
    let out = backupctl(&config, &["check"]);
    let text = stdout(&out);
    let line = common::check_line(&text, "FAIL postgres");
    assert!(
        line.contains("password_file") && line.contains("PGPASSWORD"),
        "{line}"
    );
    assert!(!text.contains("wrong-password") && !stderr(&out).contains("wrong-password"));
}

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not available: skipping");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/backupctl.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("User=postgres"));
    // Point ExecStart at the built binary; everything else is verified as shipped.
    let unit = unit.replace("/usr/bin/backupctl", &backupctl_bin().display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backupctl.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        stderr(&out)
    );
}

#[test]
fn a_repository_created_by_wal_push_knows_its_postgresql_major() {
    let t = TestRepo::new(Backend::Local);
    let cluster = Cluster::new(ClusterOptions::default());
    let config = t.write_config("backup.toml", &cluster.postgres_toml());
    // A segment outside any data directory (no PG_VERSION next to it): the major comes
    // from the WAL page header.
    let name = cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let dir = common::pg_tempdir();
    let copy = dir.path().join(&name);
    std::fs::copy(cluster.pgdata.join("pg_wal").join(&name), &copy).unwrap();
    common::chown_to_pg(dir.path());
    let out = backupctl(&config, &["wal-push", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = backupctl(&config, &["info"]);
    let text = stdout(&out);
    assert!(text.contains("PostgreSQL 15,"), "{text}\n{}", stderr(&out));
}

/// `info` shows the daemon's next runs in the configured zone, to the second, and
/// `retention --dry-run` shows durations as the config writes them.
#[test]
fn times_are_shown_in_the_configured_zone_and_durations_as_written() {
    let t = TestRepo::new(Backend::Local);
    let cluster = Cluster::new(ClusterOptions::default());
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\ntimezone = \"Asia/Shanghai\"\nphysical = \"0 3 * * *\"\n\
             [retention.physical]\nkeep_within = \"90d\"\n",
            cluster.postgres_toml()
        ),
    );
    let out = backupctl(&config, &["backup", "--kind", "logical"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = backupctl(&config, &["info"]);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("physical "))
        .unwrap_or_else(|| panic!("{text}"));
    // next 2026-12-04T03:00:00+08:00: local 03:00, whole seconds.
    assert!(line.contains("T03:00:00+08:00"), "{line}");
    assert!(
        text.contains("daemon jobs (times in Asia/Shanghai)"),
        "{text}"
    );
    let out = backupctl(&config, &["list"]);
    assert!(
        stdout(&out).contains("times in Asia/Shanghai"),
        "{}",
        stdout(&out)
    );
    let id = common::json(&backupctl(&config, &["--json", "list"]))["backups"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = backupctl(&config, &["info", &id]);
    let started = stdout(&out)
        .lines()
        .find(|l| l.starts_with("started:"))
        .unwrap()
        .to_string();
    assert!(
        started.ends_with("+08:00") && !started.contains('.'),
        "{started}"
    );
    let out = backupctl(&config, &["retention", "--dry-run"]);
    let text = stdout(&out);
    assert!(text.contains("keep_within = 90d"), "{text}");
    assert!(!text.contains("months"), "{text}");
    // The logical rule is the default one, written the same way.
    assert!(text.contains("keep_within = 30d"), "{text}");
}

/// An S3 repository without credentials anywhere: one line per failure naming what to
/// set, no retries (asking again finds none again), no SDK warnings.
#[test]
fn s3_without_credentials_says_what_to_set_in_one_line() {
    let dir = common::pg_tempdir();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\ntype = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\nforce_path_style = true\n\
             [backup]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    common::chown_to_pg(dir.path());
    let mut cmd = Command::new(backupctl_bin());
    cmd.arg("--config").arg(&config).arg("check");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", dir.path());
    let out = common::as_pg(&mut cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL repository "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("no S3 credentials: set repository.access_key_id"),
        "{line}"
    );
    let err = stderr(&out);
    assert!(!err.contains("retrying"), "{err}");
    assert!(!err.contains("WARN"), "{err}");
}
