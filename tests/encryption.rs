//! Encryption at rest, on both repository backends against real PostgreSQL: nothing the
//! repository stores holds a marker planted in the database; PITR, logical restore and
//! verification work through the encryption; a wrong or missing key, a plaintext
//! repository given a key, flipped bytes, cut objects and swapped objects are refused
//! naming what is wrong; a key rotation keeps old backups restorable.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::setup::Setup;
use common::{backupctl, backupctl_env, chown_to_pg, pg_tempdir, stderr, stdout, walk, Backend};
use tempfile::TempDir;

/// Planted in the database; must never appear in what the repository stores.
const MARKER: &str = "MARKER-c0ffee-5ecret-d474-MARKER";

both_backends!(
    nothing_stored_is_plaintext_and_every_restore_works,
    wrong_keys_and_damaged_objects_are_refused_naming_them,
    a_rotation_keeps_old_backups_restorable,
);

/// A key file of `bytes` random bytes (base64 text, as `openssl rand -base64` writes).
fn key_file(dir: &TempDir, name: &str) -> PathBuf {
    use std::io::Read;
    let mut raw = [0u8; 48];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    chown_to_pg(&path);
    path
}

fn encryption_toml(key: &Path, previous: &[&Path]) -> String {
    let previous: Vec<String> = previous
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    format!(
        "[encryption]\nkey_file = \"{}\"\nprevious_key_files = [{}]\n",
        key.display(),
        previous.join(", ")
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` whose bytes contain the marker.
fn files_with_marker(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).unwrap_or_default(), MARKER.as_bytes()))
        .collect()
}

impl Setup {
    /// Where the repository's objects are stored on disk (either backend).
    fn stored_root(&self) -> PathBuf {
        let manifest = self.object_path("repo.json");
        manifest.parent().unwrap().to_path_buf()
    }

    fn repo_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.object_path("repo.json")).unwrap()).unwrap()
    }

    /// Object names of backup `id`, from its manifest.
    fn objects(&self, id: &str) -> Vec<String> {
        let info: serde_json::Value =
            serde_json::from_str(&self.ok(&["--json", "info", id])).unwrap();
        info["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| format!("backups/{id}/{}", o["name"].as_str().unwrap()))
            .collect()
    }

    /// Run `args`; it must fail, and its output must name every one of `names`.
    fn refused(&self, config: &Path, args: &[&str], names: &[&str]) -> String {
        let out = backupctl(config, args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!out.status.success(), "{args:?} succeeded:\n{text}");
        for n in names {
            assert!(text.contains(n), "{args:?} does not name {n}:\n{text}");
        }
        text
    }
}

fn nothing_stored_is_plaintext_and_every_restore_works(backend: Backend) {
    let keys = pg_tempdir();
    let key = key_file(&keys, "repo.key");
    // No compression: what would be stored in plaintext holds the marker as it is.
    // wal_log_hints: page LSNs show every change (an incremental backup below).
    let s = Setup::with(
        backend,
        common::ClusterOptions {
            conf: vec!["wal_log_hints = on".into()],
            ..Default::default()
        },
        &format!(
            "[compression]\nalgorithm = \"none\"\n\n{}",
            encryption_toml(&key, &[])
        ),
    );
    s.sql("CREATE TABLE secret (id int PRIMARY KEY, note text)");
    s.sql(&format!(
        "INSERT INTO secret SELECT g, '{MARKER}' FROM generate_series(1, 200) g"
    ));
    let logical = s.ok(&["backup", "--kind", "logical"]).trim().to_string();
    let physical = s.backup_no_verify();
    s.sql(&format!("INSERT INTO secret VALUES (201, '{MARKER}')"));
    std::thread::sleep(Duration::from_millis(1100));
    let target = s.now();
    std::thread::sleep(Duration::from_millis(1100));
    s.sql(&format!("INSERT INTO secret VALUES (202, '{MARKER}')"));
    common::switch_wal_and_wait(&s.cluster);
    // An incremental backup: its changed blocks are encrypted like everything else.
    let incremental = s
        .ok(&[
            "backup",
            "--kind",
            "incremental",
            "--parent",
            &physical,
            "--no-verify",
        ])
        .trim()
        .to_string();
    assert!(incremental.ends_with("-incremental"), "{incremental}");
    s.sql(&format!("INSERT INTO secret VALUES (203, '{MARKER}')"));
    common::switch_wal_and_wait(&s.cluster);

    // Verification works through the encryption and names the key.
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "verify", "--all", "--wal"])).unwrap();
    let key_id = s.repo_json()["encryption"]["key_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(report["backups"].as_array().unwrap().len(), 3, "{report}");
    for b in report["backups"].as_array().unwrap() {
        assert_eq!(b["outcome"], "ok", "{report}");
        assert_eq!(b["encryption_key"], key_id.as_str(), "{report}");
    }
    assert_eq!(report["wal"]["ok"], true, "{report}");

    // The control: the cluster's own WAL holds the marker in plaintext...
    assert!(
        !files_with_marker(&s.cluster.pgdata.join("pg_wal")).is_empty(),
        "the marker is not in the cluster's WAL: the scan below would prove nothing"
    );
    // ... and no stored object does: WAL, backup parts, dumps, manifests.
    let stored = walk(&s.stored_root());
    for prefix in ["wal/", "backups/"] {
        assert!(
            stored.iter().any(|f| f.contains(prefix)),
            "nothing stored under {prefix}: {stored:?}"
        );
    }
    assert_eq!(files_with_marker(&s.stored_root()), Vec::<String>::new());
    for f in &stored {
        if f.ends_with("manifest.json") {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_err(),
                "{f} is plaintext JSON"
            );
        }
    }
    // check says so.
    let check = s.ok(&["check"]);
    let line = common::check_line(&check, "encryption");
    assert!(
        line.contains(&format!("new objects use key {key_id}")),
        "{check}"
    );
    // repo.json is plaintext, and records the key by id only.
    let repo_json = s.repo_json();
    // 4: encrypted, holding incremental backups.
    assert_eq!(repo_json["format"], 4, "{repo_json}");
    assert!(!std::fs::read_to_string(&key).unwrap().contains(&key_id));

    // PITR.
    let r = s.restore_start(&["--target-time", &target]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM secret"), "201");
    r.stop();
    drop(r);
    let r = s.restore_start(&["--backup", &physical, "--target", "immediate"]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM secret"), "200");
    r.stop();
    drop(r);
    let r = s.restore_start(&["--backup", &incremental, "--target", "immediate"]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM secret"), "202");
    r.stop();

    // Logical restore.
    s.ok(&[
        "restore",
        "--logical",
        &logical,
        "--dbname",
        "copy",
        "--create",
    ]);
    assert_eq!(s.cluster.psql("copy", "SELECT count(*) FROM secret"), "200");

    // Spools and scratch space keep no plaintext once the commands are done.
    let state = s.t.dir.path().join("state");
    assert_eq!(files_with_marker(&state), Vec::<String>::new());
}

fn wrong_keys_and_damaged_objects_are_refused_naming_them(backend: Backend) {
    let keys = pg_tempdir();
    let key = key_file(&keys, "repo.key");
    let other = key_file(&keys, "other.key");
    let s = Setup::with_config(backend, &encryption_toml(&key, &[]));
    s.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    let id = s.backup_no_verify();
    let postgres = s.cluster.postgres_toml();

    // A wrong key: refused before any object is read, naming the key file.
    let wrong = s.t.write_config(
        "wrong.toml",
        &format!("{postgres}\n{}", encryption_toml(&other, &[])),
    );
    s.refused(
        &wrong,
        &["list"],
        &["not a key of repository", other.to_str().unwrap()],
    );
    // No key: refused, saying the repository is encrypted.
    let none = s.t.write_config("none.toml", &postgres);
    s.refused(&none, &["list"], &["is encrypted", "encryption.key_file"]);
    // A missing key file: refused naming it.
    let gone = keys.path().join("gone.key");
    let missing = s.t.write_config(
        "missing.toml",
        &format!("{postgres}\n{}", encryption_toml(&gone, &[])),
    );
    s.refused(&missing, &["list"], &[gone.to_str().unwrap()]);

    // A plaintext repository given a key later is refused: never a mix.
    let plain_text = std::fs::read_to_string(&none)
        .unwrap()
        .replace("cluster = \"main\"", "cluster = \"plain\"");
    let plain = s.t.dir.path().join("plain.toml");
    std::fs::write(&plain, &plain_text).unwrap();
    chown_to_pg(&plain);
    s.ok_with(&plain, &["backup", "--kind", "logical"]);
    let plain_keyed = s.t.dir.path().join("plain-keyed.toml");
    std::fs::write(
        &plain_keyed,
        format!("{plain_text}\n{}", encryption_toml(&key, &[])),
    )
    .unwrap();
    chown_to_pg(&plain_keyed);
    s.refused(
        &plain_keyed,
        &["list"],
        &["initialised without encryption", "new repository"],
    );

    // A passphrase (from the environment) works, and another passphrase is refused.
    let phrase_text = plain_text.replace("cluster = \"plain\"", "cluster = \"phrase\"")
        + "\n[encryption]\nkey_env = \"BACKUPCTL_TEST_PASSPHRASE\"\npassphrase = true\n";
    let phrase = s.t.dir.path().join("phrase.toml");
    std::fs::write(&phrase, phrase_text).unwrap();
    chown_to_pg(&phrase);
    let env = |p: &str| vec![("BACKUPCTL_TEST_PASSPHRASE", p.to_string())];
    let out = backupctl_env(
        &phrase,
        &["backup", "--kind", "logical"],
        &env("correct horse battery staple"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = backupctl_env(&phrase, &["list"], &env("correct horse battery staple"));
    assert!(
        out.status.success() && stdout(&out).contains("logical"),
        "{}",
        stderr(&out)
    );
    let out = backupctl_env(&phrase, &["list"], &env("incorrect horse battery staple"));
    assert!(
        !out.status.success() && stderr(&out).contains("BACKUPCTL_TEST_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("horse"),
        "the passphrase is in a message: {}",
        stderr(&out)
    );

    // Damaged objects fail verification naming them; put back, the backup verifies.
    let objects = s.objects(&id);
    assert!(objects.len() >= 2, "{objects:?}");
    let (a, b) = (s.object_path(&objects[0]), s.object_path(&objects[1]));
    let (orig_a, orig_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let put_back = || {
        std::fs::write(&a, &orig_a).unwrap();
        std::fs::write(&b, &orig_b).unwrap();
    };
    // A flipped byte in the middle of a part.
    let mut bad = orig_a.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&a, &bad).unwrap();
    s.refused(&s.config, &["verify", &id], &[&objects[0]]);
    put_back();
    // A cut part.
    std::fs::write(&a, &orig_a[..orig_a.len() - 100]).unwrap();
    s.refused(&s.config, &["verify", &id], &[&objects[0]]);
    put_back();
    // Two parts swapped.
    std::fs::write(&a, &orig_b).unwrap();
    std::fs::write(&b, &orig_a).unwrap();
    let text = s.refused(&s.config, &["verify", &id], &["FAILED"]);
    assert!(
        text.contains(&objects[0]) || text.contains(&objects[1]),
        "{text}"
    );
    put_back();
    // Two archived WAL segments swapped: the WAL check names them.
    let wal: Vec<String> = walk(&s.stored_root().join("wal"))
        .into_iter()
        .filter(|f| {
            let name = Path::new(f).file_name().unwrap().to_str().unwrap();
            name.len() >= 24
                && name[..24].bytes().all(|b| b.is_ascii_hexdigit())
                && !name.contains(".backup")
                && !name.contains(".partial")
                && !name.ends_with(".meta")
        })
        .collect();
    assert!(wal.len() >= 2, "{wal:?}");
    let (w1, w2) = (PathBuf::from(&wal[0]), PathBuf::from(&wal[1]));
    let (o1, o2) = (std::fs::read(&w1).unwrap(), std::fs::read(&w2).unwrap());
    std::fs::write(&w1, &o2).unwrap();
    std::fs::write(&w2, &o1).unwrap();
    let name = |p: &Path| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_string()
    };
    s.refused(&s.config, &["verify", "--wal"], &[&name(&w1), &name(&w2)]);
    std::fs::write(&w1, &o1).unwrap();
    std::fs::write(&w2, &o2).unwrap();
    // A flipped byte in the manifest: the backup is reported unusable, not hidden, and
    // nothing else is blocked.
    let manifest = s.object_path(&format!("backups/{id}/manifest.json"));
    let orig_m = std::fs::read(&manifest).unwrap();
    let mut bad_m = orig_m.clone();
    bad_m[100] ^= 0x01;
    std::fs::write(&manifest, &bad_m).unwrap();
    let listing = s.ok(&["list"]);
    assert!(
        listing.contains(&id) && listing.contains("undecryptable"),
        "{listing}"
    );
    std::fs::write(&manifest, &orig_m).unwrap();
    s.ok(&["verify", &id]);
}

impl Setup {
    fn ok_with(&self, config: &Path, args: &[&str]) -> String {
        let out = backupctl(config, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }
}

fn a_rotation_keeps_old_backups_restorable(backend: Backend) {
    let keys = pg_tempdir();
    let old = key_file(&keys, "old.key");
    let new = key_file(&keys, "new.key");
    let s = Setup::with_config(backend, &encryption_toml(&old, &[]));
    s.sql("CREATE TABLE t (id int)");
    s.sql("INSERT INTO t VALUES (1)");
    let first = s.backup_no_verify();
    let old_id = s.repo_json()["encryption"]["key_ids"][0]
        .as_str()
        .unwrap()
        .to_string();

    // Rotate: the new key writes (WAL too: the archive_command reads this config), the
    // old one still reads.
    let postgres = s.cluster.postgres_toml();
    s.t.write_config(
        "backup.toml",
        &format!("{postgres}\n{}", encryption_toml(&new, &[&old])),
    );
    // Reading commands do not write: the new key is recorded by the first write.
    assert!(s.ok(&["list"]).contains(&first));
    assert_eq!(
        s.repo_json()["encryption"]["key_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.sql("INSERT INTO t VALUES (2)");
    let second = s.backup_no_verify();
    let ids = s.repo_json()["encryption"]["key_ids"].clone();
    assert_eq!(ids.as_array().unwrap().len(), 2, "{ids}");
    assert_eq!(ids[0], old_id.as_str());
    let new_id = ids[1].as_str().unwrap().to_string();

    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "verify", "--all", "--wal"])).unwrap();
    let by_id = |id: &str| {
        report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&first)["encryption_key"], old_id.as_str(), "{report}");
    assert_eq!(
        by_id(&second)["encryption_key"],
        new_id.as_str(),
        "{report}"
    );
    assert!(
        report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["outcome"] == "ok"),
        "{report}"
    );
    assert_eq!(report["wal"]["ok"], true, "{report}");
    let check = s.ok(&["check"]);
    let line = common::check_line(&check, "encryption");
    assert!(
        line.contains(&format!(
            "new objects use key {new_id}, 1 earlier key(s) recorded"
        )),
        "{check}"
    );
    let human = s.ok(&["verify", &first]);
    assert!(
        human.contains(&format!("encrypted with key {old_id}")),
        "{human}"
    );

    let r = s.restore_start(&["--backup", &first, "--target", "immediate"]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "1");
    r.stop();
    drop(r);
    let r = s.restore_start(&[]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "2");
    r.stop();

    // Without the old key, what it wrote is refused naming the key it needs.
    let only_new = s.t.write_config(
        "only-new.toml",
        &format!("{postgres}\n{}", encryption_toml(&new, &[])),
    );
    s.refused(
        &only_new,
        &["verify", &first],
        &[&old_id, "previous_key_files"],
    );
}
