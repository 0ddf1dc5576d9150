//! Never restore the wrong thing: a damaged manifest is named and skipped (the other
//! backups stay usable, retention never deletes it), an altered manifest is told apart
//! from altered data, a backup that failed verification is not chosen while a good one can
//! serve, and a repository without `repo.json` uses the segment size its manifests record.
//! Real PostgreSQL 15 on both repository backends.

mod common;

use std::path::{Path, PathBuf};

use common::setup::Setup;
use common::{
    backupctl, check_output, chown_to_pg, pg_tempdir, stderr, stdout, Backend, Cluster,
    ClusterOptions, TestRepo,
};
use serde_json::Value;

use common::setup::KEEP_LAST_1;

impl Setup {
    fn manifest_path(&self, id: &str) -> PathBuf {
        self.object_path(&format!("backups/{id}/manifest.json"))
    }

    fn json_ok(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// Rewrite a file in place (keeping its owner) with `f` applied to its bytes.
fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// `restore --dry-run` into a fresh directory: (exit code, stdout, stderr).
fn restore_dry_run(s: &Setup, extra: &[&str]) -> (Option<i32>, String, String) {
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored").display().to_string();
    let mut args = vec!["restore", "--dry-run", "--pgdata", &pgdata];
    args.extend_from_slice(extra);
    let out = s.run(&args);
    (out.status.code(), stdout(&out), stderr(&out))
}

both_backends!(
    unreadable_manifest_of_an_old_backup_blocks_nothing,
    altered_manifest_is_named_not_the_data,
    restore_prefers_a_backup_whose_verification_did_not_fail,
    repo_json_records_the_size_of_the_first_segment_not_a_guess,
);

fn unreadable_manifest_of_an_old_backup_blocks_nothing(backend: Backend) {
    let s = Setup::with_config(backend, KEEP_LAST_1);
    let old = s.backup_no_verify();
    let new = s.backup_no_verify();
    // One flipped byte: `{` becomes `z`, the JSON no longer parses.
    edit(&s.manifest_path(&old), |b| b[0] ^= 1);

    let list = s.ok(&["list"]);
    assert!(
        list.contains(&old) && list.contains("unreadable"),
        "list must name the unreadable manifest:\n{list}"
    );
    let listing = s.json_ok(&["--json", "list"]);
    let bad = &listing["unreadable_manifests"][0];
    assert_eq!(bad["id"], old.as_str(), "{listing}");
    assert!(
        bad["reason"].as_str().unwrap().contains("parse"),
        "{listing}"
    );
    assert_eq!(listing["backups"][0]["id"], new.as_str(), "{listing}");

    let info = s.ok(&["info"]);
    assert!(info.contains(&old) && info.contains("unreadable"), "{info}");
    let summary = s.json_ok(&["--json", "info"]);
    assert_eq!(summary["unreadable_manifests"][0]["id"], old.as_str());

    let check = s.run(&["check"]);
    let text = stdout(&check);
    let line = text
        .lines()
        .find(|l| l.contains(&old))
        .unwrap_or_else(|| panic!("check must name {old}:\n{text}"));
    assert!(
        line.starts_with("FAIL") || line.starts_with("WARN"),
        "{line}"
    );
    assert!(text.contains("fix:"), "{text}");

    // Retention keeps it (and everything it might need), dry or real.
    let plan = s.json_ok(&["--json", "retention", "--dry-run"]);
    let entry = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == old.as_str())
        .unwrap_or_else(|| panic!("retention must list {old}: {plan}"));
    assert_eq!(entry["action"], "keep", "{plan}");
    assert!(
        entry["reasons"].to_string().contains("manifest unreadable"),
        "{plan}"
    );
    assert_eq!(plan["delete"]["keys"], serde_json::json!([]), "{plan}");
    s.ok(&["retention"]);
    assert!(s.manifest_path(&old).exists());

    let (code, out, err) = restore_dry_run(&s, &["--backup", &new]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&new), "{out}");
    // Forcing the damaged one names the problem.
    let (code, _, err) = restore_dry_run(&s, &["--backup", &old]);
    assert_ne!(code, Some(0));
    assert!(err.contains(&old) && err.contains("unreadable"), "{err}");

    let report = s.json_ok(&["--json", "verify", "--latest"]);
    assert_eq!(report["backups"][0]["id"], new.as_str(), "{report}");
    assert_eq!(report["backups"][0]["outcome"], "ok", "{report}");
}

fn altered_manifest_is_named_not_the_data(backend: Backend) {
    let s = Setup::new(backend);
    let old = s.backup_no_verify();
    let new = s.backup_no_verify();
    // One hex digit of an object's checksum: still valid JSON.
    edit(&s.manifest_path(&new), |b| {
        let text = String::from_utf8(b.clone()).unwrap();
        let at = text.find("\"sha256\"").unwrap();
        let digit = at + text[at..].find(": \"").unwrap() + 3;
        b[digit] = if b[digit] == b'0' { b'1' } else { b'0' };
    });

    let out = s.run(&["verify", &new]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("manifest of backup {new} was altered")),
        "the error must name the manifest:\n{text}"
    );
    assert!(
        !text.contains("corrupt or was replaced") && !text.contains("failed its checksum"),
        "the intact data must not be blamed:\n{text}"
    );

    let listing = s.json_ok(&["--json", "list"]);
    assert_eq!(listing["unreadable_manifests"][0]["id"], new.as_str());
    assert!(
        listing["unreadable_manifests"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("altered"),
        "{listing}"
    );
    // Restore leaves the altered backup alone and says which it used.
    let (code, out, err) = restore_dry_run(&s, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&old), "{out}{err}");
}

fn restore_prefers_a_backup_whose_verification_did_not_fail(backend: Backend) {
    let s = Setup::new(backend);
    let good = s.backup_no_verify();
    let bad = s.backup_no_verify();
    // Damage the newer backup's data and let verification record the failure.
    let part = s.object_path(&format!("backups/{bad}/base.0.tar.zst"));
    edit(&part, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
    });
    let out = s.run(&["verify", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    let (code, out, err) = restore_dry_run(&s, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&good), "must pick {good}:\n{out}{err}");
    assert!(
        err.contains(&bad) && err.contains("failed verification"),
        "the reason must say which backup was skipped and why:\n{err}"
    );
    // --backup still forces it.
    let (code, out, err) = restore_dry_run(&s, &["--backup", &bad]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&bad), "{out}");
}

/// 64 MiB segments and no repo.json: retention and restore use the manifests' size.
#[test]
fn segment_size_comes_from_the_manifests_without_repo_json() {
    let s = Setup::with(
        Backend::Local,
        ClusterOptions {
            initdb_args: vec!["--wal-segsize=64".into()],
            ..Default::default()
        },
        KEEP_LAST_1,
    );
    let _old = s.backup_no_verify();
    let new = s.backup_no_verify();
    let m = s.json_ok(&["--json", "info", &new]);
    assert_eq!(m["physical"]["wal_segment_size"], 64u64 << 20, "{m}");
    let start_wal = m["physical"]["start_wal"].as_str().unwrap().to_string();
    std::fs::remove_file(s.object_path("repo.json")).unwrap();

    let plan = s.json_ok(&["--json", "retention", "--dry-run"]);
    assert_eq!(
        plan["wal"]["keep_from"]["segment"],
        start_wal.as_str(),
        "the WAL floor is the kept backup's own start segment: {plan}"
    );
    let (code, out, err) = restore_dry_run(&s, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&new), "{out}{err}");
}

/// A history file pushed into a new repository says nothing about the segment size, so
/// it must not create repo.json with a guess: the first segment does, with its own size.
fn repo_json_records_the_size_of_the_first_segment_not_a_guess(backend: Backend) {
    let t = TestRepo::new(backend);
    let cluster = Cluster::new(ClusterOptions {
        initdb_args: vec!["--wal-segsize=64".into()],
        ..Default::default()
    });
    let config = t.write_config("backup.toml", &cluster.postgres_toml());
    let pg_wal = cluster.pgdata.join("pg_wal");
    let history = pg_wal.join("00000002.history");
    std::fs::write(&history, "1\t0/4000000\tno recovery target specified\n").unwrap();
    chown_to_pg(&history);
    let out = backupctl(&config, &["wal-push", history.to_str().unwrap()]);
    check_output("wal-push of a history file", out);
    let segment = pg_wal.join("000000010000000000000001");
    let out = backupctl(&config, &["wal-push", segment.to_str().unwrap()]);
    check_output("wal-push of the first segment", out);
    let info = stdout(&check_output(
        "info",
        backupctl(&config, &["--json", "info"]),
    ));
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["identity"]["wal_segment_size"],
        64u64 << 20,
        "repo.json must record the cluster's segment size: {info}"
    );
}
