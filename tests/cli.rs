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
    ] {
        assert!(help.contains(cmd), "--help does not mention {cmd}:\n{help}");
    }
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
}

/// The line of `check`'s text report for `name`, with its fix.
fn check_line(text: &str, name: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(name));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {name} line:\n{text}"));
    let rest: Vec<&str> = lines.take_while(|l| l.starts_with(' ')).collect();
    format!("{first}\n{}", rest.join("\n"))
}

#[test]
fn check_diagnoses_the_cause_not_a_guess() {
    let t = TestRepo::new(Backend::Local);
    let cluster = Cluster::new(ClusterOptions::default());

    // No [repository] and nothing at the default path: not "no backups".
    assert!(!std::path::Path::new(backupctl::config::DEFAULT_LOCAL_REPOSITORY).exists());
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
    let line = check_line(&stdout(&out), "FAIL repository");
    assert!(
        line.contains("[repository]") && line.contains("repository.path"),
        "{line}"
    );
    for args in [&["list"][..], &["info"][..]] {
        let out = backupctl(&bare, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains("repository.path"), "{}", stderr(&out));
    }

    // repo.json that does not parse may be repaired; one that cannot be read must stay.
    let config = t.write_config("backup.toml", &cluster.postgres_toml());
    let repo_json = t.dir.path().join("repo/main/repo.json");
    std::fs::create_dir_all(repo_json.parent().unwrap()).unwrap();
    std::fs::write(&repo_json, "{ not json").unwrap();
    common::chown_to_pg(&t.dir.path().join("repo"));
    let line = check_line(
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
        let line = check_line(
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
    let line = check_line(&text, "FAIL postgres");
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
