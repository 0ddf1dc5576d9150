//! One conformance suite for every repository backend: the local filesystem and S3
//! (a real s3s-fs server). Both must behave identically for everything backupctl relies
//! on: atomic puts, no-clobber puts, metadata, listing, deletes, streaming large objects,
//! and no visible object after a failed or killed upload. The failure-injecting wrapper
//! ([`backupctl::repo::faulty::Faulty`]) with no faults configured must pass the same
//! suite (it is used in place of real backends in failure tests), and each fault it can
//! inject is checked to behave as documented.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use backupctl::codec::{Algorithm, Codec};
use backupctl::repo::faulty::{Faulty, Op, ReadEnd, When};
use backupctl::repo::local::LocalRepository;
use backupctl::repo::{PutOptions, RepoError, Repository, RepositoryExt};
use backupctl::transfer::{get_stream, put_stream, ChecksumMismatch};
use common::{walk, Backend, TestRepo};

fn zstd() -> Codec {
    Codec {
        algorithm: Algorithm::Zstd,
        level: 3,
        threads: 0,
    }
}

/// Deterministic, partly compressible bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len)
        .map(|i| {
            if i % 4096 < 2048 {
                (i % 251) as u8
            } else {
                rng.u8(..)
            }
        })
        .collect()
}

async fn small_objects(repo: &Arc<dyn Repository>) {
    assert!(repo.head("a/missing").await.unwrap().is_none());
    match repo.get("a/missing").await {
        Err(e) => assert!(e.is_not_found(), "{e}"),
        Ok(_) => panic!("get of a missing key succeeded"),
    }

    repo.put_bytes("a/b/one", b"first".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(repo.get_bytes("a/b/one").await.unwrap(), b"first");
    let head = repo.head("a/b/one").await.unwrap().unwrap();
    assert_eq!(head.size, 5);
    assert!(head.last_modified.is_some());

    // Overwrite replaces.
    repo.put_bytes("a/b/one", b"second!".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(repo.get_bytes("a/b/one").await.unwrap(), b"second!");

    // No-clobber refuses and leaves the old content.
    let err = repo
        .put_bytes(
            "a/b/one",
            b"third".to_vec(),
            PutOptions {
                if_absent: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyExists { .. }), "{err}");
    assert_eq!(repo.get_bytes("a/b/one").await.unwrap(), b"second!");

    // Empty objects exist.
    repo.put_bytes("a/empty", vec![], PutOptions::default())
        .await
        .unwrap();
    assert_eq!(repo.head("a/empty").await.unwrap().unwrap().size, 0);
    assert!(repo.get_bytes("a/empty").await.unwrap().is_empty());
}

async fn metadata(repo: &Arc<dyn Repository>) {
    let mut md = BTreeMap::new();
    md.insert("sha256".to_string(), "ab".repeat(32));
    md.insert("source-size".to_string(), "16777216".to_string());
    repo.put_bytes(
        "m/obj",
        b"x".to_vec(),
        PutOptions {
            metadata: md.clone(),
            if_absent: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(repo.head("m/obj").await.unwrap().unwrap().metadata, md);
    assert_eq!(repo.get("m/obj").await.unwrap().meta.metadata, md);
    // Listings don't need metadata but must not show sidecars or temp files.
    let keys = repo.list_keys("m/").await.unwrap();
    assert_eq!(keys, vec!["m/obj"]);
}

async fn listing(repo: &Arc<dyn Repository>) {
    for k in [
        "l/wal/0000000100000000/000000010000000000000002",
        "l/wal/0000000100000000/000000010000000000000001",
        "l/wal/00000002.history",
        "l/backups/20261122T000000Z-physical/manifest.json",
        "l/backups/20261122T000000Z-physical/base.0.tar",
        "l/backupsX/other",
    ] {
        repo.put_bytes(k, k.as_bytes().to_vec(), PutOptions::default())
            .await
            .unwrap();
    }
    let keys =
        |v: Vec<backupctl::repo::ObjectMeta>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    assert_eq!(
        keys(repo.list("l/wal/").await.unwrap()),
        vec![
            "l/wal/0000000100000000/000000010000000000000001",
            "l/wal/0000000100000000/000000010000000000000002",
            "l/wal/00000002.history",
        ]
    );
    // A prefix that ends mid-name.
    assert_eq!(
        keys(
            repo.list("l/wal/0000000100000000/00000001000000000000000")
                .await
                .unwrap()
        )
        .len(),
        2
    );
    assert_eq!(keys(repo.list("l/backups/").await.unwrap()).len(), 2);
    assert_eq!(keys(repo.list("l/backups").await.unwrap()).len(), 3);
    assert!(repo.list("l/nothing/").await.unwrap().is_empty());
    let sizes: u64 = repo.list("l/").await.unwrap().iter().map(|o| o.size).sum();
    assert!(sizes > 0);

    // Deletes are idempotent; delete_many removes all.
    repo.delete("l/backupsX/other").await.unwrap();
    repo.delete("l/backupsX/other").await.unwrap();
    let all: Vec<String> = keys(repo.list("l/").await.unwrap());
    repo.delete_many(&all).await.unwrap();
    assert!(repo.list("l/").await.unwrap().is_empty());
}

async fn large_streams(repo: &Arc<dyn Repository>) {
    // Larger than the S3 test part size (5 MiB) several times over: multipart.
    let data = Arc::new(pattern(23 << 20, 1));
    let src = data.clone();
    let (stored, ()) = put_stream(
        repo,
        "big/obj.zst",
        zstd(),
        PutOptions::default(),
        move |w| {
            for chunk in src.chunks(100_000) {
                w.write_all(chunk)?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(
        repo.head("big/obj.zst").await.unwrap().unwrap().size,
        stored.stored.size
    );
    let back = get_stream(
        repo,
        "big/obj.zst",
        Algorithm::Zstd,
        Some(stored.stored.clone()),
        |r| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(r, &mut v)?;
            Ok(v)
        },
    )
    .await
    .unwrap();
    assert!(back == *data, "round trip changed the data");

    // Uncompressed and multipart: the stored bytes are the data.
    let src = data.clone();
    let (stored, ()) = put_stream(
        repo,
        "big/raw",
        Codec::NONE,
        PutOptions::default(),
        move |w| {
            w.write_all(&src)?;
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(stored.stored.size, data.len() as u64);

    // A wrong expected digest is reported as a checksum failure naming the object.
    let mut wrong = stored.stored.clone();
    wrong.sha256 = "f".repeat(64);
    let err = get_stream(repo, "big/raw", Algorithm::None, Some(wrong), |r| {
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    })
    .await
    .unwrap_err();
    let mm = err
        .downcast_ref::<ChecksumMismatch>()
        .expect("checksum mismatch");
    assert_eq!(mm.key, "big/raw");
}

/// Metadata known only after the body (wal-push streams a segment while compressing it):
/// stored with the body when it comes; when it never comes, nothing is stored, whatever
/// the body held, and a no-clobber put still refuses to replace.
async fn metadata_after_the_body(repo: &Arc<dyn Repository>) {
    let body = pattern(3 << 20, 7);
    let md = BTreeMap::from([("sha256".to_string(), "cd".repeat(32))]);
    // The body arrives in pieces, the metadata after its end.
    let (mut w, r) = tokio::io::duplex(64 << 10);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let producer = tokio::spawn({
        let (body, md) = (body.clone(), md.clone());
        async move {
            use tokio::io::AsyncWriteExt;
            for piece in body.chunks(300_000) {
                w.write_all(piece).await.unwrap();
            }
            w.shutdown().await.unwrap();
            tx.send(md).unwrap();
        }
    });
    let n = repo
        .put_described_after("late/ok", Box::new(r), rx, true)
        .await
        .unwrap();
    producer.await.unwrap();
    assert_eq!(n, body.len() as u64);
    assert_eq!(repo.get_bytes("late/ok").await.unwrap(), body);
    assert_eq!(repo.head("late/ok").await.unwrap().unwrap().metadata, md);

    // A complete-looking body, but the producer failed: nothing.
    let (tx, rx) = tokio::sync::oneshot::channel::<BTreeMap<String, String>>();
    drop(tx);
    let cursor = Box::new(std::io::Cursor::new(body.clone()));
    repo.put_described_after("late/failed", cursor, rx, true)
        .await
        .unwrap_err();
    assert!(repo.head("late/failed").await.unwrap().is_none());

    // No-clobber holds.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tx.send(md.clone()).unwrap();
    let cursor = Box::new(std::io::Cursor::new(b"other".to_vec()));
    let err = repo
        .put_described_after("late/ok", cursor, rx, true)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyExists { .. }), "{err}");
    assert_eq!(repo.get_bytes("late/ok").await.unwrap(), body);
    let keys = repo.list_keys("late/").await.unwrap();
    assert_eq!(keys, vec!["late/ok"]);
}

async fn failed_uploads_leave_nothing(repo: &Arc<dyn Repository>) {
    // Fails after several multipart parts went up.
    let err = put_stream(
        repo,
        "fail/obj",
        Codec::NONE,
        PutOptions::default(),
        |w| -> anyhow::Result<()> {
            w.write_all(&pattern(17 << 20, 2))?;
            anyhow::bail!("source failed")
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("source failed"));
    assert!(repo.head("fail/obj").await.unwrap().is_none());
    assert!(repo.list("fail/").await.unwrap().is_empty());
    // Small object path too.
    let _ = put_stream(
        repo,
        "fail/small",
        zstd(),
        PutOptions::default(),
        |w| -> anyhow::Result<()> {
            w.write_all(b"abc")?;
            anyhow::bail!("source failed")
        },
    )
    .await
    .unwrap_err();
    assert!(repo.list("fail/").await.unwrap().is_empty());
}

async fn conformance(backend: Backend) {
    let t = TestRepo::new(backend);
    suite(&t.open().await).await;
}

async fn suite(repo: &Arc<dyn Repository>) {
    let repo = repo.clone();
    small_objects(&repo).await;
    metadata(&repo).await;
    metadata_after_the_body(&repo).await;
    listing(&repo).await;
    large_streams(&repo).await;
    failed_uploads_leave_nothing(&repo).await;
    // Nothing unfinished is left behind by the suite itself.
    assert_eq!(repo.cleanup_incomplete(Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_repository_conformance() {
    conformance(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository_conformance() {
    conformance(Backend::S3).await;
}

/// A large S3 object comes in ranges fetched ahead of the reader (see
/// `repo::s3::ranged`): the bytes are the object's, whatever the reader's pace, and an
/// object replaced while it is read fails the read instead of mixing two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ranged_reads_are_the_object_or_fail() {
    use tokio::io::AsyncReadExt;
    let t = TestRepo::new(Backend::S3);
    let repo = t.open().await;
    for len in [(16 << 20) - 1, 16 << 20, (16 << 20) + 1, 29 << 20] {
        let data = pattern(len, len as u64);
        repo.put_bytes("r/obj", data.clone(), PutOptions::default())
            .await
            .unwrap();
        let mut obj = repo.get("r/obj").await.unwrap();
        assert_eq!(obj.meta.size, len as u64);
        // A slow reader: the ranges ahead wait for it.
        let mut back = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = obj.body.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            back == data,
            "{len} bytes: the ranged read changed the data"
        );
    }

    let old = pattern(33 << 20, 7);
    repo.put_bytes("r/moving", old.clone(), PutOptions::default())
        .await
        .unwrap();
    let mut obj = repo.get("r/moving").await.unwrap();
    let mut first = vec![0u8; 1000];
    obj.body.read_exact(&mut first).await.unwrap();
    assert_eq!(first, old[..1000]);
    // Replaced while the first range is read: the ranges fetched before that still
    // hold the old bytes, those after cannot be had.
    tokio::time::sleep(Duration::from_millis(300)).await;
    repo.put_bytes("r/moving", pattern(33 << 20, 8), PutOptions::default())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let err = obj
        .body
        .read_to_end(&mut rest)
        .await
        .expect_err("a read mixed two versions of the object");
    assert!(err.to_string().contains("replaced"), "{err}");
    assert!(rest.len() < old.len(), "{}", rest.len());
    assert!(
        rest[..] == old[1000..1000 + rest.len()],
        "bytes of the new version were read"
    );
}

/// An encrypted repository behaves, for its callers, exactly as a plaintext one: bodies,
/// sizes, metadata, listings, no-clobber puts, failed uploads.
async fn encrypted_conformance(backend: Backend) {
    let t = TestRepo::new(backend);
    let key = t.dir.path().join("repo.key");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let path = t.write_config(
        "encrypted.toml",
        &format!("[encryption]\nkey_file = \"{}\"\n", key.display()),
    );
    let cfg = backupctl::config::Config::load(Some(&path)).unwrap();
    let repo = backupctl::repo::open(&cfg).await.unwrap();
    // A new repository takes no WAL, backup or export before repo.json records its key.
    let wal = "wal/0000000100000000/000000010000000000000001";
    let err = repo
        .put_bytes(wal, b"segment".to_vec(), PutOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not initialised") && err.contains("check --init"),
        "{err}"
    );
    assert!(repo.head(wal).await.unwrap().is_none());
    let id = backupctl::repo::identity::RepoIdentity::ensure(&*repo, 42, 15, 16 << 20, true)
        .await
        .unwrap();
    assert_eq!(id.system_identifier(), 42);
    repo.put_bytes(wal, b"segment".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(repo.get_bytes(wal).await.unwrap(), b"segment");
    let stored = backupctl::repo::identity::RepoIdentity::load(&*repo)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.format, 2);
    assert!(stored.encryption.is_some());
    // A plaintext config refuses it even where the identity is checked again.
    let err = stored.check(&*repo, 42, false).unwrap_err().to_string();
    assert!(err.contains("is encrypted"), "{err}");
    suite(&repo).await;
    // What is stored is not what was put.
    repo.put_bytes("plain/check", b"visible?".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let stored = walk(t.dir.path())
        .into_iter()
        .chain(
            t.s3.as_ref()
                .map(|s| walk(&s.bucket_dir()))
                .unwrap_or_default(),
        )
        .find(|f| f.ends_with("plain/check"))
        .expect("the object's file");
    let bytes = std::fs::read(stored).unwrap();
    assert_eq!(bytes.len() as u64, backupctl::crypto::sealed_len(8));
    assert!(!bytes.windows(8).any(|w| w == b"visible?"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_local_repository_conformance() {
    encrypted_conformance(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_s3_repository_conformance() {
    encrypted_conformance(Backend::S3).await;
}

/// The wrapper with nothing to inject is indistinguishable from what it wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_repository_without_faults_conformance() {
    let t = TestRepo::new(Backend::Local);
    let faulty = Arc::new(Faulty::new(t.open().await));
    let repo: Arc<dyn Repository> = faulty.clone();
    suite(&repo).await;
    assert!(faulty.requests() > 0);
    assert_eq!(faulty.injected(), 0);
}

// ---------------------------------------------------------------------------------------
// Each fault the Faulty wrapper injects, over a local repository.

fn local(dir: &tempfile::TempDir) -> Arc<dyn Repository> {
    Arc::new(LocalRepository::new(dir.path().to_path_buf()))
}

async fn put(repo: &dyn Repository, key: &str, body: &[u8]) -> Result<u64, RepoError> {
    repo.put_bytes(key, body.to_vec(), PutOptions::default())
        .await
}

#[tokio::test]
async fn faulty_fails_the_nth_request() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).fail(When::nth(3), true);
    put(&repo, "a", b"a").await.unwrap();
    assert!(repo.head("a").await.unwrap().is_some());
    // The third request, whatever it is, fails (transiently, as configured) without
    // reaching the wrapped repository.
    let err = put(&repo, "b", b"b").await.unwrap_err();
    assert!(matches!(err, RepoError::Remote { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(repo.inner().head("b").await.unwrap().is_none());
    // Only that one.
    put(&repo, "b", b"b").await.unwrap();
    assert_eq!(repo.get_bytes("b").await.unwrap(), b"b");
    assert_eq!((repo.requests(), repo.injected()), (5, 1));
}

#[tokio::test]
async fn faulty_fails_the_nth_request_of_one_kind() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).fail(When::nth_of(Op::Get, 2).onwards(), false);
    put(&repo, "k", b"body").await.unwrap();
    assert_eq!(repo.get_bytes("k").await.unwrap(), b"body");
    // Other kinds neither fail nor count towards the gets.
    assert!(repo.head("k").await.unwrap().is_some());
    repo.list("").await.unwrap();
    for _ in 0..2 {
        let err = repo.get_bytes("k").await.unwrap_err();
        assert!(matches!(err, RepoError::Remote { .. }), "{err}");
        assert!(!err.is_transient(), "configured as permanent: {err}");
    }
    assert_eq!(repo.requests_of(Op::Get), 3);
    // Healed, the wrapper forwards again.
    repo.heal();
    assert_eq!(repo.get_bytes("k").await.unwrap(), b"body");
    assert_eq!(repo.injected(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_counts_concurrent_requests_exactly() {
    let d = tempfile::tempdir().unwrap();
    let repo = Arc::new(Faulty::new(local(&d)).fail(When::nth_of(Op::Head, 41).onwards(), true));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.head("x").await.is_err() })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap() as u32;
    }
    // Each request got a number of its own: exactly requests 41..=50 failed.
    assert_eq!(failed, 10);
    assert_eq!((repo.requests_of(Op::Head), repo.injected()), (50, 10));
}

#[tokio::test]
async fn faulty_timeout_after_write_leaves_the_object_stored() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).timeout_after_write(When::every(Op::Put));
    let err = put(&repo, "w/obj", b"content").await.unwrap_err();
    assert!(err.is_transient(), "a timeout is worth retrying: {err}");
    // The write went through: the object is there, complete.
    assert_eq!(repo.inner().get_bytes("w/obj").await.unwrap(), b"content");
    // So a no-clobber retry finds it, which is what a caller must expect.
    let err = repo
        .put_bytes(
            "w/obj",
            b"content".to_vec(),
            PutOptions {
                if_absent: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyExists { .. }), "{err}");

    // Metadata known after the body: the same, metadata included.
    let md = BTreeMap::from([("sha256".to_string(), "ab".repeat(32))]);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tx.send(md.clone()).unwrap();
    let body = Box::new(std::io::Cursor::new(b"late".to_vec()));
    let err = repo
        .put_described_after("w/late", body, rx, true)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let head = repo.inner().head("w/late").await.unwrap().unwrap();
    assert_eq!((head.size, head.metadata), (4, md));
    assert_eq!(repo.injected(), 2);
}

#[tokio::test]
async fn faulty_adds_latency_to_every_request() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).latency(Duration::from_millis(50));
    let start = std::time::Instant::now();
    put(&repo, "k", b"x").await.unwrap();
    repo.head("k").await.unwrap();
    repo.get_bytes("k").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert_eq!(repo.injected(), 0, "latency is not counted as a fault");
}

#[tokio::test]
async fn faulty_truncated_read_ending_cleanly_gives_a_short_body() {
    let d = tempfile::tempdir().unwrap();
    let repo: Arc<dyn Repository> =
        Arc::new(Faulty::new(local(&d)).truncate_reads(When::every(Op::Get), 100, ReadEnd::Eof));
    let data = pattern(1000, 5);
    put(repo.as_ref(), "t/obj", &data).await.unwrap();
    put(repo.as_ref(), "t/small", b"short").await.unwrap();
    // No error: the body is just short, while meta still tells the object's size.
    let obj = repo.get("t/obj").await.unwrap();
    assert_eq!(obj.meta.size, 1000);
    assert_eq!(repo.get_bytes("t/obj").await.unwrap(), data[..100]);
    // A reader that checks what it got against what was stored notices.
    let expected = backupctl::codec::Digest::of(&data);
    let err = get_stream(&repo, "t/obj", Algorithm::None, Some(expected), |r| {
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(err.downcast_ref::<ChecksumMismatch>().is_some(), "{err:#}");
    // Bodies no longer than the cut are whole.
    assert_eq!(repo.get_bytes("t/small").await.unwrap(), b"short");
}

#[tokio::test]
async fn faulty_truncated_read_with_an_error_fails_transiently() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).truncate_reads(When::nth_of(Op::Get, 1), 10, ReadEnd::Error);
    put(&repo, "t/obj", &pattern(1000, 6)).await.unwrap();
    let err = repo.get_bytes("t/obj").await.unwrap_err();
    assert!(
        err.is_transient(),
        "a dropped connection is worth retrying: {err}"
    );
    // The retry (the second get) reads it all.
    assert_eq!(repo.get_bytes("t/obj").await.unwrap().len(), 1000);
    assert_eq!(repo.injected(), 1);
}

#[tokio::test]
async fn faulty_list_omits_the_newest_object() {
    let d = tempfile::tempdir().unwrap();
    let repo = Faulty::new(local(&d)).list_omits_newest(When::nth_of(Op::List, 1));
    // Written in this order, so "n/b" is the newest though not the last by key.
    for k in ["n/a", "n/c", "n/b"] {
        put(&repo, k, k.as_bytes()).await.unwrap();
        // Past the filesystem's timestamp granularity.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let keys =
        |v: Vec<backupctl::repo::ObjectMeta>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    assert_eq!(keys(repo.list("n/").await.unwrap()), vec!["n/a", "n/c"]);
    // The object is there all along; the next listing shows it.
    assert!(repo.head("n/b").await.unwrap().is_some());
    assert_eq!(
        keys(repo.list("n/").await.unwrap()),
        vec!["n/a", "n/b", "n/c"]
    );
    assert_eq!(repo.injected(), 1);
}

// ---------------------------------------------------------------------------------------
// Killed uploads and memory: these run the upload in a child process (this test binary,
// re-executed to run one ignored test), so the parent can SIGKILL it or read its peak RSS.

const CHILD_ENV: &str = "BACKUPCTL_TEST_CHILD_CONFIG";

fn spawn_child(
    test: &str,
    config: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, config);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Child: upload an endless slow stream until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by killed_upload_leaves_no_object_*"]
async fn child_endless_upload() {
    let Some(config) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let cfg = backupctl::config::Config::load(Some(std::path::Path::new(&config))).unwrap();
    let repo = backupctl::repo::open(&cfg).await.unwrap();
    let _ = put_stream(
        &repo,
        "killed/obj",
        Codec::NONE,
        PutOptions::default(),
        |w| -> anyhow::Result<()> {
            let chunk = pattern(1 << 20, 3);
            for i in 0.. {
                w.write_all(&chunk)?;
                if i == 12 {
                    println!("UPLOADING");
                    std::io::stdout().flush()?;
                }
                if i > 12 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        },
    )
    .await;
}

fn killed_upload_leaves_no_object(backend: Backend) {
    let t = TestRepo::new(backend);
    let config = t.write_config("child.toml", "");
    let mut child = spawn_child("child_endless_upload", &config, &[]);
    // Wait until the child has pushed data (several S3 parts / a big temp file).
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "child exited before uploading");
        if line.contains("UPLOADING") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let child_pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use backupctl::repo::leftover::{self, Writer};
        let repo = t.open().await;
        assert!(repo.head("killed/obj").await.unwrap().is_none());
        assert!(repo
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|o| !o.key.starts_with("killed")));
        if backend == Backend::Local {
            // The leftover is seen, with its size, and the writer its name records.
            let left = repo.leftovers("").await.unwrap();
            assert_eq!(left.len(), 1, "{left:?}");
            assert!(left[0].bytes >= 5 << 20, "{left:?}");
            assert_eq!(leftover::summary(repo.as_ref()).await.unwrap().count, 1);
            assert_eq!(
                left[0].writer,
                Some(Writer {
                    host: backupctl::host::local_hostname(),
                    pid: child_pid
                })
            );
            // Its writer is gone: the next job removes it, not waiting for the delay.
            let (n, bytes) = leftover::remove_dead_writers(repo.as_ref(), "").await;
            assert_eq!((n, bytes), (1, left[0].bytes));
            // A temp file named before names carried writers waits for the delay.
            let old = t.dir.path().join("repo/main/killed/.tmp-AbC123");
            std::fs::write(&old, b"x").unwrap();
            assert_eq!(leftover::remove_dead_writers(repo.as_ref(), "").await.0, 0);
            assert_eq!(repo.cleanup_incomplete(Duration::ZERO).await.unwrap(), 1);
        }
        // The S3 test server lists no unfinished multipart uploads, so S3 leftovers (which
        // never name a writer) cannot be counted here.
        assert!(repo.leftovers("").await.unwrap().is_empty());
    });
    if let Some(s3) = &t.s3 {
        // Nothing under the bucket's data directory: the object never became visible.
        let visible: Vec<_> = walk(&s3.bucket_dir());
        assert!(
            visible.iter().all(|p| !p.contains("killed")),
            "visible after kill: {visible:?}"
        );
    }
}

#[test]
fn killed_upload_leaves_no_object_local() {
    killed_upload_leaves_no_object(Backend::Local);
}

#[test]
fn killed_upload_leaves_no_object_s3() {
    killed_upload_leaves_no_object(Backend::S3);
}

const STREAM_MIB_ENV: &str = "BACKUPCTL_TEST_STREAM_MIB";

/// Child: stream N MiB through zstd into the repository and back, then print peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by streaming_memory_is_bounded_*"]
async fn child_stream_and_report_rss() {
    let Some(config) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mib: usize = std::env::var(STREAM_MIB_ENV).unwrap().parse().unwrap();
    let cfg = backupctl::config::Config::load(Some(std::path::Path::new(&config))).unwrap();
    let repo = backupctl::repo::open(&cfg).await.unwrap();
    let (stored, ()) = put_stream(
        &repo,
        "rss/obj.zst",
        zstd(),
        PutOptions::default(),
        move |w| {
            let chunk = pattern(1 << 20, 4);
            for _ in 0..mib {
                w.write_all(&chunk)?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    let n = get_stream(
        &repo,
        "rss/obj.zst",
        Algorithm::Zstd,
        Some(stored.stored),
        |r| Ok(std::io::copy(r, &mut std::io::sink())?),
    )
    .await
    .unwrap();
    assert_eq!(n, (mib as u64) << 20);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    println!("PEAK {hwm}");
}

fn streaming_memory_is_bounded(backend: Backend) {
    let t = TestRepo::new(backend);
    let config = t.write_config("child.toml", "");
    let mib = 384;
    let child = spawn_child(
        "child_stream_and_report_rss",
        &config,
        &[(STREAM_MIB_ENV, &mib.to_string())],
    );
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kb: u64 = text
        .lines()
        .find_map(|l| l.split_once("PEAK VmHWM:").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no peak RSS line in child output: {text}"))
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "{backend:?}: streamed {mib} MiB up and down, peak RSS {} MiB",
        kb / 1024
    );
    // The object is six times the bound: memory must not follow the object size.
    assert!(
        kb < 64 * 1024,
        "peak RSS {} MiB for a {mib} MiB stream",
        kb / 1024
    );
}

#[test]
fn streaming_memory_is_bounded_local() {
    streaming_memory_is_bounded(Backend::Local);
}

#[test]
fn streaming_memory_is_bounded_s3() {
    streaming_memory_is_bounded(Backend::S3);
}
