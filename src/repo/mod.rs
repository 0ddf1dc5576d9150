//! The repository: where every artifact lives. One trait, two backends.
//!
//! Keys are relative to the cluster's root (`<path or prefix>/<cluster>/`) and use `/`
//! separators: `repo.json`, `wal/…`, `backups/<id>/…` (see [`layout`]). A backend knows
//! nothing of backups or WAL; it stores named byte streams durably and atomically:
//! an object is either absent or complete, never partly visible. Bodies are streams so
//! memory never grows with object size.
//!
//! # The trait contract: required methods and [`RepositoryExt`]
//!
//! Every operation of [`Repository`] that a backend implements in its own way (batched
//! deletes, durability of an object found already there, metadata known only after the
//! body) is a required method, with no default body. A backend, and any wrapper around
//! one (such as [`faulty::Faulty`]), must spell out each of them, so a wrapper always
//! forwards to the backend's own implementation instead of silently inheriting a generic
//! default with different semantics (a wrapper around S3 that fell back to a loop of
//! single deletes, or a wrapper around the local backend that skipped its fsync).
//! Backends that want the generic behaviour say so by calling [`put_described_buffered`]
//! or [`delete_each`].
//!
//! Conveniences built only on the required methods ([`RepositoryExt::put_bytes`],
//! [`RepositoryExt::get_bytes`]) live in the extension trait [`RepositoryExt`], which has
//! one blanket implementation for every repository and so cannot be overridden.

pub mod copy;
pub mod encrypted;
pub mod fallback;
pub mod faulty;
pub mod identity;
pub mod layout;
pub mod leftover;
pub mod local;
pub mod s3;
pub mod walcheck;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::config::{Config, RepositoryType};

/// A streaming object body.
pub type BodyReader = Box<dyn AsyncRead + Send + Unpin>;

/// A body whose end counts only once its producer confirms it (`confirmed` sent); an
/// end without that, the producer having failed after its last bytes, is an error,
/// so that nothing is stored. Before it, bytes pass as they come.
pub struct EndConfirmed {
    inner: BodyReader,
    confirmation: tokio::sync::oneshot::Receiver<()>,
    /// The confirmation came (an end may be read more than once).
    confirmed: bool,
}

impl EndConfirmed {
    pub fn new(inner: BodyReader, confirmation: tokio::sync::oneshot::Receiver<()>) -> Self {
        EndConfirmed {
            inner,
            confirmation,
            confirmed: false,
        }
    }
}

impl AsyncRead for EndConfirmed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(()))
                if buf.filled().len() == before && buf.remaining() > 0 =>
            {
                this.confirmed = this.confirmed || this.confirmation.try_recv().is_ok();
                if this.confirmed {
                    std::task::Poll::Ready(Ok(()))
                } else {
                    std::task::Poll::Ready(Err(std::io::Error::other(
                        "the body ended without its producer confirming it",
                    )))
                }
            }
            other => other,
        }
    }
}

/// Metadata sent once an object's body has been produced; see
/// [`Repository::put_described_after`].
pub type LateMetadata = tokio::sync::oneshot::Receiver<BTreeMap<String, String>>;

/// The metadata of `key`, or the error that the body's producer failed.
pub async fn late_metadata(
    key: &str,
    metadata: LateMetadata,
) -> RepoResult<BTreeMap<String, String>> {
    metadata.await.map_err(|_| {
        RepoError::io(
            "produce",
            key,
            std::io::Error::other("the object's content could not be produced"),
        )
    })
}

/// What a put should do besides storing bytes.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Small string metadata stored with the object (S3 user metadata; a sidecar locally).
    pub metadata: BTreeMap<String, String>,
    /// Fail with [`RepoError::AlreadyExists`] instead of replacing an existing object.
    pub if_absent: bool,
}

/// What the repository knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    /// Filled by `head` and `get`; empty in listings.
    pub metadata: BTreeMap<String, String>,
}

/// An object being read.
pub struct GetObject {
    pub meta: ObjectMeta,
    pub body: BodyReader,
    /// In an encrypted repository, the id of the key the object was written with.
    pub encryption_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("object {key} not found in the repository")]
    NotFound { key: String },
    #[error("object {key} already exists in the repository")]
    AlreadyExists { key: String },
    #[error("{op} {key}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {key}: {message}")]
    Remote {
        op: &'static str,
        key: String,
        message: String,
        transient: bool,
    },
}

impl RepoError {
    /// Worth retrying: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            RepoError::Remote { transient, .. } => *transient,
            RepoError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// What is wrong, when an encrypted object failed to decrypt or authenticate (see
    /// [`encrypted`]): altered, cut, moved, or written with a key that is not configured.
    pub fn undecryptable(&self) -> Option<String> {
        match self {
            RepoError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
                Some(format!("{self}: {source}"))
            }
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RepoError::NotFound { .. })
    }

    pub fn io(op: &'static str, key: &str, source: std::io::Error) -> RepoError {
        RepoError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }
}

pub type RepoResult<T> = Result<T, RepoError>;

/// One storage backend. Implementations must make `put` atomic (readers see the old
/// object or the complete new one) and durable when it returns `Ok`.
///
/// Every method is required (see the module documentation for why); helpers built on
/// them are in [`RepositoryExt`].
#[async_trait]
pub trait Repository: Send + Sync {
    /// Where the repository is, for messages: `/var/lib/backupctl/repo/main` or
    /// `s3://bucket/prefix/main`.
    fn describe(&self) -> String;

    /// Store `body` under `key`; returns the number of bytes stored.
    async fn put(&self, key: &str, body: BodyReader, opts: PutOptions) -> RepoResult<u64>;

    /// Open `key` for reading.
    async fn get(&self, key: &str) -> RepoResult<GetObject>;

    /// Size and metadata of `key`, or `None` when absent.
    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> RepoResult<Vec<ObjectMeta>>;

    /// Remove `key`; removing an absent key succeeds.
    async fn delete(&self, key: &str) -> RepoResult<()>;

    /// Remove many keys; absent keys are no error. Backends may batch; one without a
    /// batch request calls [`delete_each`].
    async fn delete_many(&self, keys: &[String]) -> RepoResult<()>;

    /// Remove leftovers of uploads that never finished (temp files of a killed process,
    /// S3 multipart uploads never completed or aborted) older than `older_than`.
    /// Returns how many were removed.
    async fn cleanup_incomplete(&self, older_than: Duration) -> RepoResult<usize>;

    /// Leftovers of uploads that never finished under `prefix` (`""`: everywhere), with
    /// their writer when it is known (see [`leftover`]).
    async fn leftovers(&self, prefix: &str) -> RepoResult<Vec<leftover::Leftover>>;

    /// Remove leftovers [`Repository::leftovers`] returned; returns how many went.
    async fn remove_leftovers(&self, which: &[leftover::Leftover]) -> RepoResult<usize>;

    /// Store `body`, a small object (a few MiB) whose metadata is known only once the
    /// body has been produced: it is taken from `metadata` after the body's end. If
    /// `metadata` fails (its sender dropped: the producer failed), nothing is stored,
    /// whatever the body held. A backend that keeps metadata apart from the data writes
    /// the body as it comes; one that must send both together calls
    /// [`put_described_buffered`].
    async fn put_described_after(
        &self,
        key: &str,
        body: BodyReader,
        metadata: LateMetadata,
        if_absent: bool,
    ) -> RepoResult<u64>;

    /// Make an object that is already there durable, as a put returning `Ok` would
    /// have: one found by a retried write may come from a process killed after its
    /// rename but before its directory was fsynced, which a crash of the host could
    /// still undo. An object store, whose visible objects are durable, does nothing.
    async fn sync(&self, key: &str) -> RepoResult<()>;

    /// Other repositories that hold copies of what this one holds, by name, in the
    /// order to ask them: where an object whose bytes fail their checksum here is read
    /// again. Only a reader over several repositories ([`fallback::Fallback`]) has any.
    fn copies(&self) -> Vec<(String, Arc<dyn Repository>)> {
        Vec::new()
    }
}

/// Conveniences for every [`Repository`], built only on its required methods. The
/// blanket implementation is the only one, so a backend or a wrapper cannot give these
/// different semantics: whatever a backend does differently belongs in a required
/// method of [`Repository`].
#[async_trait]
pub trait RepositoryExt: Repository {
    /// The keys of [`Repository::list`].
    async fn list_keys(&self, prefix: &str) -> RepoResult<Vec<String>>;

    /// Store a small in-memory object.
    async fn put_bytes(&self, key: &str, bytes: Vec<u8>, opts: PutOptions) -> RepoResult<u64>;

    /// Read a whole (small) object into memory. The body is taken as the backend gives
    /// it: its length is not checked against `meta.size`.
    async fn get_bytes(&self, key: &str) -> RepoResult<Vec<u8>>;
}

#[async_trait]
impl<R: Repository + ?Sized> RepositoryExt for R {
    async fn list_keys(&self, prefix: &str) -> RepoResult<Vec<String>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>, opts: PutOptions) -> RepoResult<u64> {
        self.put(key, Box::new(std::io::Cursor::new(bytes)), opts)
            .await
    }

    async fn get_bytes(&self, key: &str) -> RepoResult<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut obj = self.get(key).await?;
        let mut buf = Vec::with_capacity(obj.meta.size as usize);
        obj.body
            .read_to_end(&mut buf)
            .await
            .map_err(|e| RepoError::io("read", key, e))?;
        Ok(buf)
    }
}

/// [`Repository::put_described_after`] for a backend that stores an object's metadata
/// with its data in one request: reads the body into memory, waits for the metadata,
/// then puts both.
pub async fn put_described_buffered<R: Repository + ?Sized>(
    repo: &R,
    key: &str,
    mut body: BodyReader,
    metadata: LateMetadata,
    if_absent: bool,
) -> RepoResult<u64> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes)
        .await
        .map_err(|e| RepoError::io("read the body of", key, e))?;
    let metadata = late_metadata(key, metadata).await?;
    repo.put_bytes(
        key,
        bytes,
        PutOptions {
            metadata,
            if_absent,
        },
    )
    .await
}

/// [`Repository::delete_many`] for a backend without a batch delete: one
/// [`Repository::delete`] per key, stopping at the first failure.
pub async fn delete_each<R: Repository + ?Sized>(repo: &R, keys: &[String]) -> RepoResult<()> {
    for k in keys {
        repo.delete(k).await?;
    }
    Ok(())
}

/// A short tag naming the repository the config points at (type, endpoint, bucket or
/// path, prefix, cluster; never credentials), for per-repository files in `state_dir`,
/// computed without opening the repository.
pub fn location_tag(cfg: &Config) -> String {
    use sha2::Digest as _;
    let r = &cfg.repository;
    let location = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        r.kind, r.endpoint, r.bucket, r.path, r.prefix, r.cluster
    );
    hex::encode(&sha2::Sha256::digest(location.as_bytes())[..8])
}

/// Clean-up work a dropped upload leaves running in the background (aborting an S3
/// multipart upload). The process waits for it before exiting ([`wait_background`]), so
/// a cancelled job or a failed command leaves no unfinished upload behind.
pub fn background() -> &'static tokio_util::task::TaskTracker {
    static TRACKER: std::sync::OnceLock<tokio_util::task::TaskTracker> = std::sync::OnceLock::new();
    TRACKER.get_or_init(tokio_util::task::TaskTracker::new)
}

/// Wait up to `limit` for [`background`] work; `false` if some is still running.
pub async fn wait_background(limit: Duration) -> bool {
    let t = background();
    t.close();
    let done = tokio::time::timeout(limit, t.wait()).await.is_ok();
    t.reopen();
    done
}

/// Fail when the config names no repository (no `repository.path`, so the default
/// [`crate::config::DEFAULT_LOCAL_REPOSITORY`]) and nothing is there: an empty listing
/// would read as "no backups" when the backups are simply elsewhere.
pub fn require_existing(cfg: &Config) -> anyhow::Result<()> {
    let r = &cfg.repository;
    match &r.path {
        Some(path) if r.path_defaulted && r.kind == RepositoryType::Local && !path.exists() => {
            Err(crate::user_error!(
                "{} sets no repository: repository.path defaults to {}, which does not exist; \
                 add a [repository] section with path = \"/your/repository\" (or type = \"s3\" and bucket)",
                cfg.origin(),
                path.display()
            ))
        }
        _ => Ok(()),
    }
}

/// Open the repository the config describes.
pub async fn open(cfg: &Config) -> anyhow::Result<Arc<dyn Repository>> {
    // Faults act on what is stored: under encryption, on the ciphertext.
    encrypted::wrap(cfg, with_injected_faults(backend(cfg).await?)?).await
}

/// [`open`] without reading `repo.json` to check that the repository is not
/// encrypted: for a configuration without a key, and a repository this host found
/// plaintext a short while ago (wal-push remembers it in `state_dir` for an hour, as it
/// remembers the repository's cluster; the round trip is a good part of each call).
pub async fn open_known_plaintext(cfg: &Config) -> anyhow::Result<Arc<dyn Repository>> {
    assert!(
        !cfg.encryption.enabled(),
        "a repository opened with a key is always checked"
    );
    with_injected_faults(backend(cfg).await?)
}

async fn backend(cfg: &Config) -> anyhow::Result<Arc<dyn Repository>> {
    let r = &cfg.repository;
    Ok(match r.kind {
        RepositoryType::Local => {
            let path = r
                .path
                .as_ref()
                .expect("resolved at load: local repository has a path");
            Arc::new(local::LocalRepository::new(path.join(&r.cluster)))
        }
        RepositoryType::S3 => Arc::new(s3::S3Repository::from_config(r).await?),
    })
}

/// Open the repositories a read of `kind` (`None`: anything) may use: with one, the
/// configured repository; with several (and no `--repo`), the first that receives
/// `kind`, then the others for objects missing there ([`fallback::Fallback`]). One that
/// cannot be opened is left out with a warning, unless it is the only one. `strict`:
/// an object is "not found" only when every repository answered so (restore,
/// wal-fetch); otherwise what answered is the answer (list, info).
pub async fn open_for_reading(
    cfg: &Config,
    kind: Option<crate::config::StoredKind>,
    strict: bool,
) -> anyhow::Result<Arc<dyn Repository>> {
    let candidates: Vec<crate::config::RepositoryConfig> = match kind {
        Some(k) => cfg.repositories_for(k),
        None => cfg.all_repositories(),
    };
    if candidates.len() <= 1 {
        let one = candidates.first().unwrap_or(&cfg.repository);
        return open(&cfg.with_repository(one)).await;
    }
    let mut opened = Vec::new();
    let mut first_err = None;
    for r in &candidates {
        match open(&cfg.with_repository(r)).await {
            Ok(repo) => opened.push((r.name.clone(), repo)),
            Err(e) => {
                tracing::warn!(repository = %r.name, "cannot open repository {}: {e:#}; reading from the others", r.name);
                first_err.get_or_insert(e);
            }
        }
    }
    if opened.is_empty() {
        return Err(first_err.expect("a repository failed"));
    }
    tracing::info!(
        "reading from repository {}{}",
        opened[0].0,
        if opened.len() > 1 {
            format!(
                " (objects missing there from {})",
                opened[1..]
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
    if opened.len() == 1 {
        return Ok(opened.pop().expect("one").1);
    }
    Ok(Arc::new(fallback::Fallback::new(opened, strict)))
}

/// In builds with the `failpoints` feature, the repository wrapped as
/// [`faulty::SPEC_ENV`] says (for the fault-injection tests); otherwise unchanged.
fn with_injected_faults(repo: Arc<dyn Repository>) -> anyhow::Result<Arc<dyn Repository>> {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var(faulty::SPEC_ENV) {
        return Ok(Arc::new(
            faulty::Faulty::from_spec(repo, &spec).map_err(|e| anyhow::anyhow!(e))?,
        ));
    }
    Ok(repo)
}

/// Run `op` until it succeeds, fails permanently, or `attempts` are used up, sleeping
/// with jittered exponential backoff (full jitter, 100 ms base, 10 s cap) in between.
pub async fn retry<T, F, Fut>(what: &str, attempts: u32, mut op: F) -> RepoResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RepoResult<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < attempts => {
                let cap = Duration::from_millis(100 * (1u64 << attempt.min(7)))
                    .min(Duration::from_secs(10));
                let sleep = cap.mul_f64(fastrand::f64());
                tracing::warn!(error = %e, attempt, "{what} failed, retrying in {sleep:?}");
                tokio::time::sleep(sleep).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Attempts per repository request (the first try plus retries).
pub const ATTEMPTS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> RepoError {
        RepoError::Remote {
            op: "put",
            key: "k".into(),
            message: "503".into(),
            transient: true,
        }
    }

    #[test]
    fn a_defaulted_repository_path_must_exist_a_configured_one_need_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.toml");
        std::fs::write(&file, "").unwrap();
        let mut cfg = Config::load(Some(&file)).unwrap();
        assert!(cfg.repository.path_defaulted);
        // The machine's own default path may exist; point the default at one that does not.
        cfg.repository.path = Some(dir.path().join("absent"));
        let err = require_existing(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("repository.path defaults to") && err.contains("add a [repository]"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("absent")).unwrap();
        require_existing(&cfg).unwrap();
        cfg.repository.path = Some(dir.path().join("elsewhere"));
        cfg.repository.path_defaulted = false;
        require_existing(&cfg).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn retry_retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let v = retry("op", 5, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_after_attempts() {
        let calls = AtomicU32::new(0);
        let r: RepoResult<()> = retry("op", 3, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retry_does_not_retry_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: RepoResult<()> = retry("op", 5, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RepoError::NotFound { key: "k".into() })
        })
        .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A body's end is an end only once its producer says so: bytes written by a
    /// producer that then failed must not be stored as a whole object.
    #[tokio::test]
    async fn a_body_ends_only_when_its_producer_confirms() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for confirm in [true, false] {
            let (mut w, r) = tokio::io::duplex(64);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let producer = tokio::spawn(async move {
                w.write_all(b"every byte").await.unwrap();
                if confirm {
                    tx.send(()).unwrap();
                } else {
                    drop(tx);
                }
                w.shutdown().await.unwrap();
            });
            let mut body = EndConfirmed::new(Box::new(r), rx);
            let mut got = Vec::new();
            let read = body.read_to_end(&mut got).await;
            producer.await.unwrap();
            assert_eq!(got, b"every byte");
            assert_eq!(read.is_ok(), confirm, "{read:?}");
            // An end read again is the same end.
            let again = body.read(&mut [0u8; 8]).await;
            assert_eq!(again.is_ok(), confirm, "{again:?}");
        }
    }
}
