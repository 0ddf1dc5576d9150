//! `backupctl wal-push %p`: PostgreSQL's archive_command.
//!
//! Exit 0 only when the file is durable in the repository. Re-pushing an identical file
//! succeeds (PostgreSQL retries after crashes); a different file under the same name is
//! refused and never overwritten. Segments carry their cluster's system identifier in
//! their first page header, which must match the repository's `repo.json`: two clusters
//! can never mix WAL in one repository.
//!
//! This runs once per segment, serially, so it is kept cheap: no PostgreSQL connection,
//! the repository identity cached for an hour in `state_dir`, one round of HEADs (the
//! file's key under each compression, sent together) and one PUT per file, the segment
//! read by the compression threads and streamed to the repository as it is compressed,
//! and the next `.ready` files pushed ahead in parallel (`wal.push_concurrency`; see
//! `wal_push_ahead.rs`) so the archiver's next calls return at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::codec::{self, Codec, FileSource, Source as _};
use crate::config::{Config, DataKind, StoredKind};
use crate::ops::wal::backlog::{self, Backlog};
use crate::ops::wal::fetch_ahead;
use crate::ops::wal::push_ahead::{ready_files, Markers};
use crate::pg::wal::{self, WalFileKind};
use crate::repo::identity::RepoIdentity;
use crate::repo::{
    self, layout, leftover, ObjectMeta, PutOptions, RepoError, Repository, RepositoryExt,
};

/// Archive WAL file `path` (`%p`) into every repository that receives WAL, with the
/// `.ready` files that follow it. Succeeds once every required repository has it; a
/// repository with `required = false` that fails gets the file queued in its
/// [`Backlog`], which later calls catch up.
pub async fn run(cfg: &Config, path: PathBuf) -> anyhow::Result<()> {
    let repos = cfg.repositories_for(StoredKind::Wal);
    if repos.is_empty() {
        return Err(crate::user_error!(
            "no repository receives WAL: add \"wal\" to the kinds of one in {}",
            cfg.origin()
        ));
    }
    if repos.len() == 1 && repos[0].required {
        return run_one(&cfg.with_repository(&repos[0]), path).await;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let pushes = repos.iter().map(|r| {
        let (c, path, name) = (cfg.with_repository(r), path.clone(), name.clone());
        async move {
            if r.required {
                return run_one(&c, path)
                    .await
                    .with_context(|| format!("repository {}", r.name));
            }
            let backlog = Backlog::of(&c);
            if backlog.paused_until().is_some() || !backlog.files().is_empty() {
                // Behind already: this file waits its turn, in order.
                backlog.add(&name).with_context(|| format!("queue {name} for repository {}", r.name))?;
                return Ok(());
            }
            let pushed = match tokio::time::timeout(OPTIONAL_TIMEOUT, run_one(&c, path)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within {OPTIONAL_TIMEOUT:?}")),
            };
            if let Err(e) = pushed {
                tracing::warn!(
                    repository = %r.name,
                    wal = %name,
                    "repository {} (required = false) cannot take {name}: {e:#}; queued, it catches up later",
                    r.name
                );
                backlog.add(&name).with_context(|| format!("queue {name} for repository {}", r.name))?;
                backlog.pause();
            }
            Ok(())
        }
    });
    let results = futures_util::future::join_all(pushes).await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    // Every required repository has the file: catch up the backlogs (of optional
    // repositories, or of one made required while files were queued for it).
    let wal_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for r in &repos {
        let c = cfg.with_repository(r);
        if r.required && Backlog::of(&c).files().is_empty() {
            continue;
        }
        let sources: Vec<_> = repos.iter().filter(|o| o.name != r.name).cloned().collect();
        match tokio::time::timeout(OPTIONAL_TIMEOUT, catch_up(&c, &wal_dir, &sources)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(repository = %r.name, files = n, "backlog caught up"),
            Ok(Err(e)) => {
                tracing::warn!(repository = %r.name, "catching up the backlog failed: {e:#}; tried again in {:?}", backlog::PAUSE);
                Backlog::of(&c).pause();
            }
            Err(_) => {
                tracing::info!(repository = %r.name, "backlog catch-up goes on at the next call")
            }
        }
    }
    Ok(())
}

/// How long a call waits for a repository with `required = false`, to store its file
/// or to catch up its backlog, before leaving the rest to later calls.
const OPTIONAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Files of a backlog stored per call, at most.
const CATCH_UP_BATCH: usize = 64;

/// Store what the backlog of the repository `cfg` acts on holds: each file from
/// `wal_dir` while PostgreSQL keeps it there, else copied from one of `sources`.
/// Returns how many files went; stops at the first failure. A paused repository is left
/// alone.
pub async fn catch_up(
    cfg: &Config,
    wal_dir: &Path,
    sources: &[crate::config::RepositoryConfig],
) -> anyhow::Result<usize> {
    let backlog = Backlog::of(cfg);
    if backlog.paused_until().is_some() {
        return Ok(0);
    }
    let names: Vec<String> = backlog.files().into_iter().take(CATCH_UP_BATCH).collect();
    if names.is_empty() {
        return Ok(0);
    }
    let tag = repo::location_tag(cfg);
    let repo = repo::open(cfg).await?;
    let codec = wal_codec(
        Codec::from_config(&cfg.compression.for_kind(DataKind::Wal)),
        cfg.wal.push_concurrency(),
    );
    let mut opened: Vec<(String, Arc<dyn Repository>)> = Vec::new();
    let mut done = 0;
    for name in names {
        let local = wal_dir.join(&name);
        if local.is_file() {
            let file = read_wal_file(&local)?;
            check_identity(cfg, &tag, repo.as_ref(), &file).await?;
            let slot = Start::Slot(Slot::Queue(Arc::new(Semaphore::new(1))));
            store(repo.as_ref(), codec, file, slot, by_listing(cfg)).await?;
        } else {
            if opened.is_empty() {
                for s in sources {
                    let src = repo::open(&cfg.with_repository(s)).await?;
                    repo::copy::ensure_same_cluster(
                        src.as_ref(),
                        repo.as_ref(),
                        cfg.encryption.enabled(),
                    )
                    .await
                    .with_context(|| format!("copy WAL from repository {}", s.name))?;
                    opened.push((s.name.clone(), src));
                }
            }
            match copy_wal_from(&opened, repo.as_ref(), &name).await? {
                true => {}
                false => {
                    tracing::error!(
                        repository = %cfg.repository.name,
                        wal = %name,
                        "{name} is no longer in pg_wal and no other repository has it: repository {} misses it for good (its backups before the next one cannot be recovered past it; verify --wal shows the gap)",
                        cfg.repository.name
                    );
                    backlog.mark_lost(&name)?;
                    continue;
                }
            }
        }
        backlog.remove(&name);
        done += 1;
    }
    backlog.resume();
    Ok(done)
}

/// Copy WAL file `name` into `dst` from the first of `sources` that has it; `false`
/// when none has it.
async fn copy_wal_from(
    sources: &[(String, Arc<dyn Repository>)],
    dst: &dyn Repository,
    name: &str,
) -> anyhow::Result<bool> {
    let key = layout::wal_key(name, codec::Algorithm::Zstd).expect("a WAL file name");
    for (src_name, src) in sources {
        if let Some((found, _)) = find_archived(src.as_ref(), name, &key, true).await? {
            repo::copy::copy_object(src.as_ref(), dst, &found, None, true)
                .await
                .with_context(|| format!("copy {name} from repository {src_name}"))?;
            tracing::info!(wal = %name, from = %src_name, "copied from another repository (no longer in pg_wal)");
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`run`] for one repository.
async fn run_one(cfg: &Config, path: PathBuf) -> anyhow::Result<()> {
    // Once recovery has ended, what wal-fetch prefetched is not needed.
    fetch_ahead::remove_spool_after_recovery(&fetch_ahead::wal_dir_of(&path));
    let tag = repo::location_tag(cfg);
    let markers = Markers::new(&cfg.backup.state_dir, &tag);
    // Before reading the file: a call that finds its marker costs a few milliseconds.
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        if wal::classify(name).is_some() && markers.take(name, &path) {
            tracing::info!(wal = %name, "already archived ahead of this call");
            return Ok(());
        }
    }
    let file = read_wal_file(&path)?;
    // Push the files PostgreSQL will ask for next alongside this one: up to
    // `AHEAD_BATCHES` × `push_concurrency` files in all, `push_concurrency` at a time, so
    // that the cost of each call (and of waiting for the slowest file of a round) is
    // shared by more files when the archiver has a backlog.
    let concurrency = cfg.wal.push_concurrency();
    let ahead = ready_files(&path, ahead_count(concurrency), &markers);
    let codec = wal_codec(
        Codec::from_config(&cfg.compression.for_kind(DataKind::Wal)),
        concurrency.min(1 + ahead.len()),
    );
    let slots = Arc::new(Semaphore::new(concurrency));
    let listing = by_listing(cfg);
    // This call's own file takes the first slot. On an object store it is compressed
    // (into memory: the upload carries it whole) while the repository is opened and its
    // identity and this file are looked up, each a round trip; nothing is stored
    // before those checks pass.
    let mine = Slot::Held(slots.clone().acquire_owned().await?);
    let mine = if listing && file.data.size() <= WHOLE_IN_MEMORY {
        Start::Compressing(compress_in_memory(
            codec_for(&file, codec),
            file.data.clone(),
            mine.take().await?,
        ))
    } else {
        Start::Slot(mine)
    };
    let known_plaintext =
        !cfg.encryption.enabled() && IdentityCache::new(&cfg.backup.state_dir, &tag).plaintext();
    let repo = if known_plaintext {
        repo::open_known_plaintext(cfg).await?
    } else {
        repo::open(cfg).await?
    };
    let cluster = check_identity(cfg, &tag, repo.as_ref(), &file)
        .await
        .with_context(|| format!("archive {}", file.name))?;
    let mut others = tokio::task::JoinSet::new();
    for p in ahead {
        let (repo, state_dir, tag) = (repo.clone(), cfg.backup.state_dir.clone(), tag.clone());
        let slot = Start::Slot(Slot::Queue(slots.clone()));
        others.spawn(async move {
            let pushed = async {
                let f = read_wal_file(&p)?;
                if f.system_identifier.is_some_and(|s| s != cluster) {
                    anyhow::bail!("belongs to another cluster");
                }
                store(repo.as_ref(), codec, f, slot, listing).await
            }
            .await;
            match pushed {
                Ok(name) => {
                    if let Err(e) = Markers::new(&state_dir, &tag).put(&name, &p) {
                        tracing::warn!(error = %e, "cannot record a pushed-ahead segment; it will be pushed again");
                    }
                }
                // PostgreSQL asks for it later; that call reports the problem.
                Err(e) => tracing::debug!(path = %p.display(), error = %format!("{e:#}"), "push ahead skipped"),
            }
        });
    }
    // Temp files of killed wal-push calls of this host, in the directory this one
    // writes to, go while it stores (a directory listing: no time added). Only a local
    // repository has them: S3's unfinished uploads name no writer, and listing them
    // would add a request to every call.
    let local = cfg.repository.kind == crate::config::RepositoryType::Local;
    let dir = path
        .file_name()
        .filter(|_| local)
        .and_then(|n| layout::wal_key_base(&n.to_string_lossy()))
        .and_then(|k| k.rsplit_once('/').map(|(d, _)| format!("{d}/")));
    let tidy = async {
        if let Some(dir) = &dir {
            leftover::remove_dead_writers(repo.as_ref(), dir).await;
        }
    };
    crate::failpoint::point("wal-push.before-upload");
    let (result, ()) = tokio::join!(store(repo.as_ref(), codec, file, mine, listing), tidy);
    let result = result.map(|_| ());
    while others.join_next().await.is_some() {}
    if result.is_ok() {
        crate::failpoint::point("wal-push.after-upload");
    }
    markers.clean_old();
    result
}

/// WAL page size: a segment's first page holds the long header checked before archiving.
const FIRST_PAGE: u64 = 8192;

/// A WAL file to archive, with the identity its header carries. Its content is read by
/// the compression threads (each its own blocks), never as a whole: no 16 MiB buffer to
/// fill before compression starts.
struct WalFile {
    path: PathBuf,
    name: String,
    kind: WalFileKind,
    data: Arc<FileSource>,
    system_identifier: Option<u64>,
    seg_size: Option<u64>,
    /// The major version from the page header (segments only).
    pg_major: Option<u32>,
}

fn read_wal_file(path: &Path) -> anyhow::Result<WalFile> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| crate::user_error!("{}: not a file path", path.display()))?
        .to_string();
    let kind = wal::classify(&name).ok_or_else(|| {
        crate::user_error!(
            "{name} is not a WAL file name PostgreSQL archives; use backupctl wal-push only as archive_command = '... wal-push %p'"
        )
    })?;
    // Only the first page is read here; the compression threads read the rest.
    let data = FileSource::open(path).with_context(|| format!("read {}", path.display()))?;
    let mut first_page = Vec::new();
    let first_page = data
        .block(0, data.size().min(FIRST_PAGE) as usize, &mut first_page)
        .with_context(|| format!("read {}", path.display()))?;
    // Whose WAL is this? Segments say so in their first page; other files ask pg_control.
    let mut pg_major = None;
    let (system_identifier, seg_size) = match kind {
        WalFileKind::Segment | WalFileKind::Partial => {
            let h = wal::segment_header(first_page).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} does not start with a WAL page header; refusing to archive it",
                    path.display()
                )
            })?;
            let expected = wal::Segment::parse(&name[..24], h.segment_size as u64);
            if expected.is_none_or(|s| s.start_lsn(h.segment_size as u64) != h.page_addr) {
                anyhow::bail!(
                    "{} holds WAL for {} on timeline {}, which does not match its name; refusing to archive it",
                    path.display(),
                    h.page_addr,
                    h.tli
                );
            }
            // Compression reads the size found at open; a segment (or .partial, which
            // PostgreSQL writes at full size) is never shorter or longer than its header
            // says, so anything else is a damaged or copied-while-written file.
            if data.size() != h.segment_size as u64 {
                anyhow::bail!(
                    "{} is {} bytes long but its header says WAL segments are {} bytes; refusing to archive a damaged segment",
                    path.display(),
                    data.size(),
                    h.segment_size
                );
            }
            pg_major = wal::major_of_page_magic(h.magic);
            (Some(h.system_identifier), Some(h.segment_size as u64))
        }
        _ => (wal::control_system_identifier(&pgdata_of(path)).ok(), None),
    };
    Ok(WalFile {
        path: path.to_path_buf(),
        name,
        kind,
        data: Arc::new(data),
        system_identifier,
        seg_size,
        pg_major,
    })
}

/// The repository's cluster (system identifier), checked against `file`'s; a segment
/// creates repo.json for a new repository (other files leave that to the first segment). The answer is cached in `state_dir` for an hour.
async fn check_identity(
    cfg: &Config,
    repo_tag: &str,
    repo: &dyn Repository,
    file: &WalFile,
) -> anyhow::Result<u64> {
    let cache = IdentityCache::new(&cfg.backup.state_dir, repo_tag);
    if let (Some(cached), Some(s)) = (cache.get(), file.system_identifier) {
        if cached == s {
            return Ok(s);
        }
    }
    let identity = match RepoIdentity::load(repo).await? {
        Some(id) => {
            if let Some(s) = file.system_identifier {
                id.check(repo, s, cfg.encryption.enabled())?;
            }
            id
        }
        None => match file.system_identifier {
            // Only a segment's header says the WAL segment size; repo.json must not
            // record a guess (every later decision reads WAL with it). The first
            // segment pushed creates it.
            Some(s) if file.seg_size.is_none() => {
                tracing::debug!(file = %file.name, "repository not initialised yet: repo.json is created by the first segment, which records the segment size");
                return Ok(s);
            }
            Some(s) => {
                // PG_VERSION when run from the data directory (as archive_command), else
                // the WAL page header's magic; 0 (shown as unknown) only if neither says.
                let major = std::fs::read_to_string(pgdata_of(&file.path).join("PG_VERSION"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .or(file.pg_major)
                    .unwrap_or(0);
                let seg_size = file.seg_size.expect("a segment says its size");
                RepoIdentity::ensure(repo, s, major, seg_size, cfg.encryption.enabled()).await?
            }
            None => {
                return Err(crate::user_error!(
                    "repository {} is not initialised and {} does not say which cluster it belongs to; run `backupctl check --init`",
                    repo.describe(),
                    file.name
                ))
            }
        },
    };
    // Without a key, the repository was opened plaintext-checked (`repo::open`), or
    // the cache already said it was plaintext.
    cache.put(identity.system_identifier(), !cfg.encryption.enabled());
    Ok(identity.system_identifier())
}

/// A file's turn to compress: `push_concurrency` files compress at a time.
enum Slot {
    Held(OwnedSemaphorePermit),
    /// Wait for one (the semaphore is fair: files queue in the order their HEADs return).
    Queue(Arc<Semaphore>),
}

impl Slot {
    async fn take(self) -> anyhow::Result<OwnedSemaphorePermit> {
        Ok(match self {
            Slot::Held(permit) => permit,
            Slot::Queue(slots) => slots.acquire_owned().await?,
        })
    }
}

/// A WAL file's compressed bytes and their digest, produced on a blocking thread.
type Compressed = tokio::task::JoinHandle<std::io::Result<(Vec<u8>, codec::Digest)>>;

/// How [`store`] gets a file's compression going.
enum Start {
    /// Wait for a compression slot, after asking the repository for the file.
    Slot(Slot),
    /// Already compressing, into memory.
    Compressing(Compressed),
}

/// History files stay readable as they are; everything else is compressed.
fn codec_for(file: &WalFile, codec: Codec) -> Codec {
    if file.kind == WalFileKind::TimelineHistory {
        Codec::NONE
    } else {
        codec
    }
}

/// Compress `data` into memory, holding `permit` (a compression slot) meanwhile.
fn compress_in_memory(
    codec: Codec,
    data: Arc<FileSource>,
    permit: OwnedSemaphorePermit,
) -> Compressed {
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = Vec::with_capacity((data.size() / 2) as usize);
        let digest = codec::compress_frames(&codec, data.as_ref(), |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })?;
        Ok((out, digest))
    })
}

/// Compress, checksum and store one WAL file unless an identical copy is there.
/// Returns its name.
///
/// Locally, the repository is asked for the file before its slot comes up, the file
/// streams into the repository as it is compressed, and the slot is given back as soon
/// as the file is compressed: the next file's compression does not wait for this one's
/// HEADs, final fsync and rename. On an object store (`by_listing`), where an upload
/// carries the whole body, the file is compressed into memory while the repository is
/// asked for it.
async fn store(
    repo: &dyn Repository,
    codec: Codec,
    file: WalFile,
    start: Start,
    by_listing: bool,
) -> anyhow::Result<String> {
    let codec = codec_for(&file, codec);
    let name = file.name.clone();
    let key = layout::wal_key(&name, codec.algorithm).expect("classified WAL name");
    let data = file.data;
    let (found, compressed) = match start {
        Start::Compressing(c) => (find_archived(repo, &name, &key, true).await, c),
        Start::Slot(slot) if by_listing && data.size() > WHOLE_IN_MEMORY => {
            return store_in_two_passes(repo, codec, &key, &name, data, slot).await
        }
        Start::Slot(slot) if by_listing => {
            let compressed = async {
                let permit = slot.take().await?;
                anyhow::Ok(compress_in_memory(codec, data.clone(), permit))
            };
            let (found, compressed) =
                tokio::join!(find_archived(repo, &name, &key, true), compressed);
            (found, compressed?)
        }
        Start::Slot(slot) => return store_streaming(repo, codec, &key, &name, data, slot).await,
    };
    if let Some((found, existing)) = found? {
        let (_, digest) = compressed.await?.context("compress WAL file")?;
        compare_existing(repo, &found, &name, &existing, &digest, &data).await?;
        return Ok(name);
    }
    store_whole(repo, &key, &name, &data, compressed).await
}

/// [`store`] into a local repository: the file streams in as it is compressed.
async fn store_streaming(
    repo: &dyn Repository,
    codec: Codec,
    key: &str,
    name: &str,
    data: Arc<FileSource>,
    slot: Slot,
) -> anyhow::Result<String> {
    let (key, name) = (key.to_string(), name.to_string());
    let original = data.size();
    if let Some((found, existing)) = find_archived(repo, &name, &key, false).await? {
        let permit = slot.take().await?;
        let digest = tokio::task::spawn_blocking({
            let data = data.clone();
            move || {
                let _permit = permit;
                codec::compress_frames(&codec, data.as_ref(), |_| Ok(()))
            }
        })
        .await?
        .context("compress WAL file")?;
        compare_existing(repo, &found, &name, &existing, &digest, &data).await?;
        return Ok(name);
    }

    // The compressed file goes to the repository as it is produced (locally: written,
    // and synced every megabyte, while the rest is compressed). Its checksum follows as
    // metadata once the last frame is out; if compression fails, no metadata comes and
    // nothing is stored. No checksum of the original: zstd frames and gzip carry their
    // own of the content, checked on every decompression; it is computed only to compare
    // with a copy found already archived.
    let (mut writer, body) = tokio::io::duplex(STREAM_BUFFER);
    let (metadata_tx, metadata_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let permit = slot.take().await?;
    let compress = tokio::task::spawn_blocking({
        let data = data.clone();
        move || -> std::io::Result<codec::Digest> {
            use tokio::io::AsyncWriteExt as _;
            let _permit = permit;
            let digest = codec::compress_frames(&codec, data.as_ref(), |piece| {
                runtime.block_on(writer.write_all(piece))
            })?;
            runtime.block_on(writer.shutdown())?;
            let metadata = wal_metadata(&digest, original);
            // No receiver: the put failed, and reports why.
            let _ = metadata_tx.send(metadata);
            Ok(digest)
        }
    });
    let put = repo
        .put_described_after(&key, Box::new(body), metadata_rx, true)
        .await;
    let compressed = compress.await?;
    settle(repo, put, compressed, &key, &name, &data).await
}

/// [`store`] on an object store for a file larger than [`WHOLE_IN_MEMORY`] (a
/// segment size above the default). An upload carries the object's metadata, its
/// checksum, in its first request, and such a file is not held in memory, so it is
/// compressed twice: once for the checksum while the repository is asked for the
/// file, then again into the upload, a part sent as each fills (multipart). The
/// second pass must give the same bytes; if it does not, the upload is abandoned
/// and nothing is stored.
async fn store_in_two_passes(
    repo: &dyn Repository,
    codec: Codec,
    key: &str,
    name: &str,
    data: Arc<FileSource>,
    slot: Slot,
) -> anyhow::Result<String> {
    let permit = slot.take().await?;
    let first_pass = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let digest = codec::compress_frames(&codec, data.as_ref(), |_| Ok(()));
            (permit, digest)
        }
    });
    let (found, first_pass) = tokio::join!(find_archived(repo, name, key, true), first_pass);
    let (permit, digest) = first_pass?;
    let digest = digest.context("compress WAL file")?;
    if let Some((found, existing)) = found? {
        compare_existing(repo, &found, name, &existing, &digest, &data).await?;
        return Ok(name.to_string());
    }
    let original = data.size();
    let metadata = wal_metadata(&digest, original);
    let (mut writer, body) = tokio::io::duplex(STREAM_BUFFER);
    let (same_tx, same_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let second_pass = tokio::task::spawn_blocking({
        let (data, expected) = (data.clone(), digest.sha256.clone());
        move || -> std::io::Result<()> {
            use tokio::io::AsyncWriteExt as _;
            let _permit = permit;
            let again = codec::compress_frames(&codec, data.as_ref(), |piece| {
                runtime.block_on(writer.write_all(piece))
            })?;
            if again.sha256 != expected {
                return Err(std::io::Error::other(
                    "the file compressed differently the second time (it changed while being archived?)",
                ));
            }
            let _ = same_tx.send(());
            runtime.block_on(writer.shutdown())
        }
    });
    let body = crate::repo::EndConfirmed::new(Box::new(body), same_rx);
    let put = repo
        .put(
            key,
            Box::new(body),
            PutOptions {
                metadata,
                if_absent: true,
            },
        )
        .await;
    let compressed = second_pass.await?.map(|()| digest);
    settle(repo, put, compressed, key, name, &data).await
}

/// The metadata a stored WAL file carries: the stored bytes' SHA-256 and size, and the
/// original size.
fn wal_metadata(digest: &codec::Digest, original: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (layout::META_SHA256.to_string(), digest.sha256.clone()),
        (layout::META_SIZE.to_string(), digest.size.to_string()),
        (layout::META_SOURCE_SIZE.to_string(), original.to_string()),
    ])
}

/// What an upload of WAL file `name` under `key` came to, given how its compression
/// (`compressed`: the stored bytes' digest) ended: stored; already there, compared
/// with this file; or failed, with whichever side failed first (a compression error,
/// unless it only says that the repository stopped reading).
async fn settle(
    repo: &dyn Repository,
    put: Result<u64, RepoError>,
    compressed: std::io::Result<codec::Digest>,
    key: &str,
    name: &str,
    data: &Arc<FileSource>,
) -> anyhow::Result<String> {
    match put {
        Ok(_) => {
            let digest = compressed.context("compress WAL file")?;
            let original = data.size();
            tracing::info!(wal = %name, key = %key, stored = digest.size, original, "archived");
            Ok(name.to_string())
        }
        Err(RepoError::AlreadyExists { .. }) => {
            let digest = compressed.context("compress WAL file")?;
            let existing = repo
                .head(key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{key} vanished while archiving"))?;
            compare_existing(repo, key, name, &existing, &digest, data).await?;
            Ok(name.to_string())
        }
        Err(e) => {
            if let Err(c) = compressed {
                if c.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(anyhow::Error::from(c).context(format!("compress {name}")));
                }
            }
            Err(anyhow::Error::from(e).context(format!("archive {name}")))
        }
    }
}

/// Store the file `compressed` gives under `key` unless a copy is there already (one
/// under another compression was looked for before), comparing with that copy.
async fn store_whole(
    repo: &dyn Repository,
    key: &str,
    name: &str,
    data: &Arc<FileSource>,
    compressed: Compressed,
) -> anyhow::Result<String> {
    let (bytes, digest) = compressed.await?.context("compress WAL file")?;
    let original = data.size();
    let metadata = wal_metadata(&digest, original);
    let put = repo
        .put_bytes(
            key,
            bytes,
            PutOptions {
                metadata,
                if_absent: true,
            },
        )
        .await;
    settle(repo, put, Ok(digest), key, name, data).await
}

/// The copy of WAL file `name` already archived, under `key` (this configuration's
/// compression) or under any other compression (the setting changed since): a file
/// must be compared with what is archived under its name whatever the suffix, or a
/// different file could be stored beside it. `by_listing` (an object store, where each
/// request costs a round trip and parallel ones each a connection): one LIST of the
/// name's prefix, then a HEAD only of a copy found; otherwise the HEADs go out together.
async fn find_archived(
    repo: &dyn Repository,
    name: &str,
    key: &str,
    by_listing: bool,
) -> anyhow::Result<Option<(String, ObjectMeta)>> {
    let mut keys = vec![key.to_string()];
    for algorithm in [
        codec::Algorithm::Zstd,
        codec::Algorithm::Gzip,
        codec::Algorithm::None,
    ] {
        let k = layout::wal_key(name, algorithm).expect("classified WAL name");
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    if by_listing {
        let base = layout::wal_key_base(name).expect("classified WAL name");
        let listed: Vec<String> = repo.list(&base).await?.into_iter().map(|o| o.key).collect();
        for k in keys {
            if listed.contains(&k) {
                // Listed but gone by now (retention): as if never archived.
                if let Some(meta) = repo.head(&k).await? {
                    return Ok(Some((k, meta)));
                }
            }
        }
        return Ok(None);
    }
    let found = futures_util::future::join_all(keys.iter().map(|k| repo.head(k))).await;
    for (k, meta) in keys.into_iter().zip(found) {
        if let Some(meta) = meta? {
            return Ok(Some((k, meta)));
        }
    }
    Ok(None)
}

/// Whether [`find_archived`] lists (S3) or sends HEADs (a local directory, where a
/// listing stats every file of the directory).
fn by_listing(cfg: &Config) -> bool {
    cfg.repository.kind == crate::config::RepositoryType::S3
}

/// On an object store, a WAL file up to this size (the default segment size) is
/// compressed into memory and sent in one request; a larger one is streamed (see
/// [`store_in_two_passes`]).
const WHOLE_IN_MEMORY: u64 = 16 << 20;

/// Compressed bytes in flight between the compression threads and the repository.
const STREAM_BUFFER: usize = 2 << 20;

/// Rounds of `push_concurrency` files one call stores when that many are ready.
const AHEAD_BATCHES: usize = 2;

/// How many files to push ahead of the requested one (none with `push_concurrency = 1`).
fn ahead_count(concurrency: usize) -> usize {
    if concurrency <= 1 {
        0
    } else {
        AHEAD_BATCHES * concurrency - 1
    }
}

/// The codec for `files` WAL files compressed at the same time: `compression.threads`
/// when set, or else the CPUs shared out between the files, so that a lone segment on an
/// otherwise idle archiver is compressed by every core (zstd splits it into jobs).
fn wal_codec(configured: Codec, files: usize) -> Codec {
    let cpus = crate::config::cpus();
    wal_codec_for(configured, files, cpus)
}

fn wal_codec_for(configured: Codec, files: usize, cpus: usize) -> Codec {
    if configured.algorithm != codec::Algorithm::Zstd || configured.threads > 0 {
        return configured;
    }
    let share = (cpus / files.max(1)).min(8) as u32;
    Codec {
        // One worker would only move the work to another thread.
        threads: if share >= 2 { share } else { 0 },
        ..configured
    }
}

/// The repository's system identifier as last seen, per repository, for an hour.
struct IdentityCache {
    path: PathBuf,
}

const IDENTITY_TTL: Duration = Duration::from_secs(3600);
/// In the identity cache: the repository was found plaintext by a call without a key.
const PLAINTEXT: &str = "plaintext";

impl IdentityCache {
    fn new(state_dir: &Path, repo_tag: &str) -> IdentityCache {
        IdentityCache {
            path: state_dir.join(format!("repo-identity-{repo_tag}")),
        }
    }

    /// `(system identifier, found plaintext by a call without a key)`, when fresh.
    fn read(&self) -> Option<(u64, bool)> {
        let md = std::fs::metadata(&self.path).ok()?;
        if md.modified().ok()?.elapsed().ok()? > IDENTITY_TTL {
            return None;
        }
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut words = text.split_whitespace();
        let id = words.next()?.parse().ok()?;
        Some((id, words.next() == Some(PLAINTEXT)))
    }

    fn get(&self) -> Option<u64> {
        self.read().map(|(id, _)| id)
    }

    /// A call without a key opened the repository (checking that `repo.json` records
    /// no encryption) within the TTL.
    fn plaintext(&self) -> bool {
        self.read().is_some_and(|(_, plain)| plain)
    }

    fn put(&self, system_identifier: u64, plaintext: bool) {
        if self.read() == Some((system_identifier, plaintext)) {
            return;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let text = if plaintext {
            format!("{system_identifier} {PLAINTEXT}")
        } else {
            system_identifier.to_string()
        };
        let written = std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")))
            .and_then(|_| std::fs::write(&tmp, text))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot cache the repository identity");
        }
    }
}

/// PGDATA for a file PostgreSQL handed us: the parent of `pg_wal`, else the current
/// directory (archive_command runs in PGDATA).
fn pgdata_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "pg_wal"))
        .and_then(|p| p.parent())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The name is taken: succeed if it holds the same content, refuse loudly otherwise.
/// `stored` is the digest of this file as compressed for the repository, `data` the file.
async fn compare_existing(
    repo: &dyn Repository,
    key: &str,
    name: &str,
    existing: &ObjectMeta,
    stored: &codec::Digest,
    data: &Arc<FileSource>,
) -> anyhow::Result<()> {
    // Compression is deterministic for a given algorithm and level, so equal stored
    // bytes mean equal content (the key names the algorithm).
    if existing.size == stored.size
        && existing.metadata.get(layout::META_SHA256) == Some(&stored.sha256)
    {
        repo.sync(key).await?;
        tracing::info!(wal = %name, "already archived with identical content");
        return Ok(());
    }
    // Compressed differently (another level) or different: compare the contents.
    let ours = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut h = Sha256::new();
            data.for_each_block(|b| h.update(b))?;
            Ok(hex::encode(h.finalize()))
        })
        .await?
        .context("read the file again to compare it")?
    };
    let theirs = match existing.metadata.get(layout::META_SOURCE_SHA256) {
        Some(s) => s.clone(),
        // Written without it, or by a process killed between object and metadata.
        None => {
            let bytes = repo.get_bytes(key).await?;
            let alg = codec::algorithm_of(key);
            tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let mut dec = codec::Decoder::new(alg, &bytes[..])?;
                let mut h = Sha256::new();
                std::io::copy(&mut dec, &mut HashSink(&mut h))?;
                Ok(hex::encode(h.finalize()))
            })
            .await??
        }
    };
    if theirs == ours {
        repo.sync(key).await?;
        tracing::info!(wal = %name, "already archived with identical content");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to overwrite {key}: the repository already holds a different {name} \
         (content sha256 {theirs}, this file {ours}). Two clusters may be archiving into \
         one repository, or a server was restored without a new timeline. Nothing was changed; \
         investigate before removing either copy"
    )
}

struct HashSink<'a>(&'a mut Sha256);

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_cache_says_plaintext_only_when_a_call_without_a_key_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IdentityCache::new(dir.path(), "tag");
        assert_eq!(cache.get(), None);
        assert!(!cache.plaintext());
        cache.put(42, false);
        assert_eq!(cache.get(), Some(42));
        assert!(!cache.plaintext(), "written by a call with a key");
        cache.put(42, true);
        assert!(cache.plaintext());
        // An older cache file (the identity alone) is read as before.
        std::fs::write(dir.path().join("repo-identity-tag"), "7").unwrap();
        assert_eq!(cache.get(), Some(7));
        assert!(!cache.plaintext());
    }

    #[test]
    fn wal_codec_shares_the_cpus_between_concurrent_files() {
        let zstd = Codec {
            algorithm: codec::Algorithm::Zstd,
            level: 3,
            threads: 0,
        };
        assert_eq!(wal_codec_for(zstd, 1, 2).threads, 2);
        assert_eq!(wal_codec_for(zstd, 1, 32).threads, 8);
        assert_eq!(wal_codec_for(zstd, 2, 2).threads, 0);
        assert_eq!(wal_codec_for(zstd, 2, 8).threads, 4);
        assert_eq!(wal_codec_for(zstd, 3, 4).threads, 0);
        let fixed = Codec { threads: 1, ..zstd };
        assert_eq!(wal_codec_for(fixed, 1, 8), fixed);
        let gzip = Codec {
            algorithm: codec::Algorithm::Gzip,
            level: 6,
            threads: 0,
        };
        assert_eq!(wal_codec_for(gzip, 1, 8), gzip);
    }

    #[test]
    fn a_call_pushes_two_rounds_ahead_unless_told_to_push_one_file() {
        assert_eq!(ahead_count(1), 0);
        assert_eq!(ahead_count(2), 3);
        assert_eq!(ahead_count(8), 15);
    }

    #[test]
    fn pgdata_is_the_parent_of_pg_wal() {
        assert_eq!(
            pgdata_of(Path::new("pg_wal/000000010000000000000001")),
            PathBuf::from(".")
        );
        assert_eq!(
            pgdata_of(Path::new(
                "/var/lib/pg/main/pg_wal/000000010000000000000001"
            )),
            PathBuf::from("/var/lib/pg/main")
        );
        assert_eq!(
            pgdata_of(Path::new("/tmp/000000010000000000000001")),
            PathBuf::from(".")
        );
    }
}
