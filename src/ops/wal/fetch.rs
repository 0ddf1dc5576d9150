//! `backupctl wal-fetch %f %p`: PostgreSQL's restore_command.
//!
//! A file that is not in the archive exits 1 without a word: that is how recovery learns
//! the archive has ended, and PostgreSQL asks for files that never existed (the next
//! timeline's history) as a matter of course. Anything else that goes wrong — checksum
//! mismatch, repository errors — prints the reason on stderr, which PostgreSQL puts in
//! its log, and exits [`STOP_RECOVERY_EXIT`] (126), which stops recovery, rather than 1,
//! which would end it early; a standby (`standby.signal`) gets 1 and retries. `%p` is written atomically: a temp file beside it, then a rename.
//! It is not fsynced: PostgreSQL fsyncs a restored file it keeps (`durable_rename`), and
//! the others it reads once and deletes.
//!
//! A segment is restored together with the segments that follow it, in parallel
//! (`wal.fetch_concurrency`), into a spool the next calls take them from; see
//! `fetch_ahead.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::codec::Algorithm;
use crate::config::{Config, DataKind};
use crate::error::{Reported, StopRecovery};
use crate::ops::wal::fetch_ahead::{self, following, Spool};
use crate::pg::wal::{self, WalFileKind};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, layout, GetObject, RepoError, Repository};
use crate::transfer;

/// Rounds of `fetch_concurrency` segments one call restores.
const AHEAD_BATCHES: usize = 2;

/// The exit status for a segment that exists but cannot be restored (corrupt, repository
/// unreachable) during archive recovery. PostgreSQL reads any status up to 125 as "not
/// in the archive" and, without a recovery target, would end recovery there and promote
/// a server missing the rest of the WAL; above 125 it stops recovery with FATAL instead,
/// and the server can be started again once the cause is fixed.
pub use crate::error::STOP_RECOVERY_EXIT;

/// Map the outcome of a wal-fetch call to what PostgreSQL needs: a failure other than
/// "not archived" (the quiet exit 1), including a bad configuration, exits
/// [`STOP_RECOVERY_EXIT`] unless the server is a standby.
pub fn stop_recovery_on_failure(result: anyhow::Result<()>, dest: &Path) -> anyhow::Result<()> {
    match result {
        Err(e) if !is_not_archived(&e) && !standby(dest) => Err(StopRecovery {
            message: format!(
                "{e:#}; exit {STOP_RECOVERY_EXIT} so that recovery stops here instead of ending early as if the archive ended: fix the cause and start the server again"
            ),
        }
        .into()),
        other => other,
    }
}

/// Whether the server asking is a standby (`standby.signal` in its data directory, the
/// working directory of restore_command): a standby retries a failed restore_command
/// and may stream instead, so it gets the ordinary failure status.
fn standby(dest: &Path) -> bool {
    let wal_dir = fetch_ahead::wal_dir_of(dest);
    let pgdata = match wal_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    pgdata.join("standby.signal").exists()
}

/// The quiet failure that tells recovery a file is not in the archive.
fn is_not_archived(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Reported>()
            .is_some_and(|r| r.summary.is_none())
    })
}

/// Segments a restore planned recovery through (`wal-fetch --expect FIRST..LAST`, one
/// run of segment names on one timeline each): recovery must find every one of them, so
/// a missing one stops recovery (exit 126) instead of ending it early as if the archive
/// ended. Any other missing file is the normal end of the archive.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub runs: Vec<(String, String)>,
}

impl Expected {
    /// Parse `FIRST..LAST` (two segment names on the same timeline, FIRST <= LAST).
    pub fn parse(args: &[String]) -> anyhow::Result<Expected> {
        let mut runs = vec![];
        for a in args {
            let (first, last) = a.split_once("..").unwrap_or((a.as_str(), a.as_str()));
            let ok = |n: &str| wal::classify(n) == Some(WalFileKind::Segment);
            if !ok(first) || !ok(last) || first[..8] != last[..8] || first > last {
                return Err(crate::user_error!(
                    "--expect {a:?} must be FIRST..LAST: two WAL segment names on one timeline, FIRST not after LAST \
                     (restore writes it into restore_command; restore again rather than editing it)"
                ));
            }
            runs.push((first.to_string(), last.to_string()));
        }
        Ok(Expected { runs })
    }

    /// Whether recovery must find `name`.
    pub fn covers(&self, name: &str) -> bool {
        wal::classify(name) == Some(WalFileKind::Segment)
            && self
                .runs
                .iter()
                .any(|(a, z)| a[..8] == name[..8] && a.as_str() <= name && name <= z.as_str())
    }

    /// The error for a missing segment recovery must find.
    fn missing(&self, name: &str) -> anyhow::Error {
        let through = self.runs.last().map(|(_, z)| z.as_str()).unwrap_or("-");
        StopRecovery {
            message: format!(
                "WAL segment {name} is not in the repository, but the restore planned recovery through {through} \
                 and needs it (deleted by retention, or never archived?); recovery stops here instead of \
                 ending early and promoting a server that is missing the rest of history. Restore again \
                 (`backupctl restore` plans from what the repository holds now)"
            ),
        }
        .into()
    }
}

/// Restore WAL file `name` to `dest` (`%f`, `%p`).
pub async fn run(
    cfg: &Config,
    name: String,
    dest: &Path,
    expected: &Expected,
) -> anyhow::Result<()> {
    let kind = wal::classify(&name).ok_or_else(|| {
        crate::user_error!(
            "{name} is not a WAL file name; use backupctl wal-fetch only as restore_command = '... wal-fetch %f %p'"
        )
    })?;
    let concurrency = cfg.wal.fetch_concurrency();
    let reserve = cfg.wal.fetch_reserve_bytes();
    let spool = if kind == WalFileKind::Segment {
        Spool::beside(dest)
    } else {
        None
    };
    if let Some(spool) = &spool {
        let taken = match spool.take(&name, dest) {
            Ok(false) if concurrency > 1 => await_prefetched(spool, &name, dest).await,
            other => other,
        };
        match taken {
            Ok(true) => {
                tracing::info!(wal = %name, "restored from the prefetched copy");
                if concurrency > 1 {
                    // The running prefetcher moves on from here; if it has stopped
                    // (the archive ended, or recovery was idle), a new one starts
                    // once the spool runs low.
                    if spool.count() < BACKGROUND_DEPTH / 2 {
                        start_prefetcher(cfg, &name, dest, spool, reserve);
                    } else {
                        spool.note_position(&name);
                    }
                }
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(wal = %name, error = %e, "cannot use the prefetched copy; fetching it")
            }
        }
    }
    let repo = repo::open_for_reading(cfg, Some(crate::config::StoredKind::Wal), true).await?;
    let algorithm = cfg.compression.for_kind(DataKind::Wal).algorithm;
    let Some((key, obj)) = open(repo.as_ref(), algorithm, &name).await? else {
        if expected.covers(&name) {
            return Err(expected.missing(&name));
        }
        tracing::debug!(wal = %name, "not in the archive");
        return Err(Reported::quiet().into());
    };

    // It exists: fetch the following segments, `concurrency` at a time with this one,
    // in recovery's order, while this one is written.
    let spool = if concurrency > 1 {
        spool
    } else {
        // Prefetching was turned off: what an earlier setting spooled goes.
        if spool.is_some() {
            fetch_ahead::remove_spool(&fetch_ahead::wal_dir_of(dest));
        }
        None
    };
    let slots = Arc::new(Semaphore::new(concurrency));
    let mine = slots.clone().acquire_owned().await?;
    // The following segments are fetched by a process of their own, which goes on
    // while recovery replays this one; where it cannot be started, by this call
    // before it returns.
    let spool = match spool {
        Some(s) if start_prefetcher(cfg, &name, dest, &s, reserve) => None,
        other => other,
    };
    let ahead = spool.map(|spool| {
        let (repo, name, slots) = (repo.clone(), name.clone(), slots.clone());
        tokio::spawn(async move {
            let depth = AHEAD_BATCHES * concurrency - 1;
            prefetch(repo, algorithm, &name, spool, slots, depth, reserve).await
        })
    });
    let mut written = match write(obj, &key, &name, dest).await {
        Err(e) if transfer::is_damaged(&e) => {
            from_copies(repo.as_ref(), algorithm, &name, dest, e).await
        }
        other => other,
    };
    drop(mine);
    if let Some(ahead) = ahead {
        let _ = ahead.await;
        if let Err(e) = &written {
            // Perhaps the prefetched files took the space: free it and try once more.
            tracing::warn!(wal = %name, error = %format!("{e:#}"), "retrying without the prefetched files");
            fetch_ahead::remove_spool(&fetch_ahead::wal_dir_of(dest));
            written = match open(repo.as_ref(), algorithm, &name).await? {
                Some((key, obj)) => write(obj, &key, &name, dest).await,
                None if expected.covers(&name) => return Err(expected.missing(&name)),
                None => return Err(Reported::quiet().into()),
            };
        }
    }
    let size = written?;
    tracing::info!(wal = %name, bytes = size, "restored from the archive");
    Ok(())
}

/// Segments the background prefetcher keeps ahead of recovery (128 MiB of 16 MiB
/// segments).
const BACKGROUND_DEPTH: usize = 8;

/// How often the background prefetcher looks for recovery's progress.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The background prefetcher exits when recovery has not moved for this long.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Lock held by the background prefetcher, in the spool.
const PREFETCH_LOCK: &str = ".prefetch.lock";

/// Record `name` as recovery's position in the spool and start `backupctl wal-fetch
/// --prefetch NAME DEST` detached, unless one is running (it moves on to the position)
/// or the disk is short of room. True when it runs (or one already did).
fn start_prefetcher(cfg: &Config, name: &str, dest: &Path, spool: &Spool, reserve: u64) -> bool {
    if std::fs::create_dir_all(spool.dir()).is_err() {
        return false;
    }
    spool.note_position(name);
    if prefetcher_running(spool) {
        return true;
    }
    // The segment just restored gives the size (the repository is not asked here).
    let seg_size = std::fs::metadata(dest)
        .map(|m| m.len())
        .unwrap_or(16 << 20)
        .max(1 << 20);
    if !fetch_ahead::room_for(spool.dir(), BACKGROUND_DEPTH as u64 * seg_size, reserve) {
        tracing::info!(
            dir = %spool.dir().display(),
            reserve_mib = reserve >> 20,
            "little free space: no WAL prefetch (wal.fetch_reserve_mib)"
        );
        return true;
    }
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(config) = cfg.config_arg() {
        cmd.arg("--config").arg(config);
    }
    if let Some(r) = &cfg.selected_repository {
        cmd.arg("--repo").arg(r);
    }
    cmd.args(["wal-fetch", "--prefetch", name])
        .arg(dest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    match cmd.spawn() {
        Ok(_) => {
            tracing::debug!(after = %name, "background WAL prefetch started");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot start the background prefetch");
            false
        }
    }
}

/// How long a call waits for the segment the background prefetcher is fetching before
/// it fetches the segment itself.
const AWAIT_PREFETCH: std::time::Duration = std::time::Duration::from_secs(30);

/// When the background prefetcher is fetching `name` right now (its marker is in the
/// spool), wait for that copy rather than fetch the segment a second time beside it
/// over a new connection: at the start of a recovery, before the prefetcher is ahead.
/// True once the copy is at `dest`. False if the prefetcher stops, gives the segment
/// up, or takes longer than [`AWAIT_PREFETCH`]: then the call fetches it itself.
async fn await_prefetched(spool: &Spool, name: &str, dest: &Path) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + AWAIT_PREFETCH;
    let mut waited = false;
    while spool.is_fetching(name)
        && prefetcher_running(spool)
        && std::time::Instant::now() < deadline
    {
        waited = true;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if spool.take(name, dest)? {
            return Ok(true);
        }
    }
    if waited {
        tracing::debug!(wal = %name, "waited for the prefetcher's copy");
    }
    spool.take(name, dest)
}

/// Whether a background prefetcher holds the spool's lock.
fn prefetcher_running(spool: &Spool) -> bool {
    let Ok(f) = open_lock(spool) else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The spool's prefetcher lock file, created if needed.
fn open_lock(spool: &Spool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.dir().join(PREFETCH_LOCK))
}

/// `wal-fetch --prefetch NAME DEST`: keep the [`BACKGROUND_DEPTH`] segments after
/// recovery's position (first `name`, then what each wal-fetch call records) in the
/// spool beside `dest`, `wal.fetch_concurrency` at a time, for as long as recovery
/// moves on. One process per spool (a lock) that lives through the recovery: its
/// connections stay open, and no call waits for a new one to start. It exits at the
/// end of the archive (a segment it does not have), when recovery has not moved for
/// [`IDLE_EXIT`], or when the spool is removed (recovery ended) or replaced. Failures only cost
/// the prefetch: the call that asks for the segment fetches it and reports what is
/// wrong.
pub async fn prefetch_in_background(cfg: &Config, name: &str, dest: &Path) -> anyhow::Result<()> {
    let Some(spool) = Spool::beside(dest) else {
        return Ok(());
    };
    std::fs::create_dir_all(spool.dir())?;
    let lock = open_lock(&spool)?;
    if lock.try_lock().is_err() {
        return Ok(());
    }
    // The spool this process serves: a spool made anew at the same path (the data
    // directory removed and restored again) has a lock file of its own, and its own
    // prefetcher.
    let ours = {
        use std::os::unix::fs::MetadataExt as _;
        let m = lock.metadata()?;
        (m.dev(), m.ino())
    };
    let lock_path = spool.dir().join(PREFETCH_LOCK);
    let still_ours = || {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&lock_path).is_ok_and(|m| (m.dev(), m.ino()) == ours)
    };
    let concurrency = cfg.wal.fetch_concurrency().max(1);
    let repo = repo::open_for_reading(cfg, Some(crate::config::StoredKind::Wal), true).await?;
    let algorithm = cfg.compression.for_kind(DataKind::Wal).algorithm;
    let Some(seg_size) = segment_size(repo.as_ref()).await else {
        return Ok(());
    };
    let reserve = cfg.wal.fetch_reserve_bytes();
    let spool = Arc::new(spool);
    let mut position = name.to_string();
    spool.clean(&position);
    // Segments after the position this process has fetched, failed to fetch or is
    // fetching: each is tried once.
    let mut tried = std::collections::HashSet::new();
    let mut fetching = tokio::task::JoinSet::new();
    let mut moved = std::time::Instant::now();
    let mut archive_ended = false;
    let mut short_of_room = false;
    loop {
        if !still_ours() {
            break;
        }
        if let Some(p) = spool.position().filter(|p| *p != position) {
            position = p;
            moved = std::time::Instant::now();
            spool.clean(&position);
            tried.retain(|n: &String| fetch_ahead::is_after(n, &position));
        }
        if !archive_ended {
            for n in following(&position, seg_size, BACKGROUND_DEPTH) {
                if fetching.len() >= concurrency {
                    break;
                }
                if tried.contains(&n) || spool.has(&n) {
                    continue;
                }
                // This segment and the one being restored to pg_wal beside it.
                if !fetch_ahead::room_for(spool.dir(), 2 * seg_size, reserve) {
                    if !short_of_room {
                        tracing::info!(dir = %spool.dir().display(), reserve_mib = reserve >> 20, "little free space: WAL prefetch waits (wal.fetch_reserve_mib)");
                    }
                    short_of_room = true;
                    break;
                }
                short_of_room = false;
                tried.insert(n.clone());
                fetching.spawn(fetch_into_spool(repo.clone(), algorithm, n, spool.clone()));
            }
        }
        if fetching.is_empty() && (archive_ended || moved.elapsed() > IDLE_EXIT) {
            break;
        }
        tokio::select! {
            Some(done) = fetching.join_next() => {
                if matches!(done, Ok(Spooled::NotArchived)) {
                    archive_ended = true;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    drop(lock);
    Ok(())
}

/// The repository's WAL segment size, from its identity; None (no prefetch) where it
/// does not say.
async fn segment_size(repo: &dyn Repository) -> Option<u64> {
    match RepoIdentity::load(repo).await {
        Ok(Some(id)) if wal::valid_segment_size(id.wal_segment_size) => Some(id.wal_segment_size),
        _ => {
            tracing::debug!("no WAL segment size in the repository identity: no prefetch");
            None
        }
    }
}

/// What became of one segment to prefetch.
enum Spooled {
    Done,
    NotArchived,
    Failed,
}

/// Fetch segment `n` into the spool, logging what went wrong.
async fn fetch_into_spool(
    repo: Arc<dyn Repository>,
    algorithm: Algorithm,
    n: String,
    spool: Arc<Spool>,
) -> Spooled {
    let _marker = spool.fetching(&n);
    let fetched = match open(repo.as_ref(), algorithm, &n).await {
        Ok(Some((key, obj))) => write(obj, &key, &n, &spool.path(&n)).await.map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match fetched {
        Ok(Some(_)) => {
            tracing::debug!(wal = %n, "prefetched");
            Spooled::Done
        }
        Ok(None) => Spooled::NotArchived,
        Err(e) => {
            tracing::warn!(wal = %n, error = %format!("{e:#}"), "prefetch failed; the segment will be fetched when recovery asks for it");
            Spooled::Failed
        }
    }
}

/// Restore the `depth` segments after `name` into `spool`, within this call (where no
/// background prefetcher could be started).
async fn prefetch(
    repo: Arc<dyn Repository>,
    algorithm: Algorithm,
    name: &str,
    spool: Spool,
    slots: Arc<Semaphore>,
    depth: usize,
    reserve: u64,
) {
    spool.clean(name);
    let Some(seg_size) = segment_size(repo.as_ref()).await else {
        return;
    };
    let names: Vec<String> = following(name, seg_size, depth)
        .into_iter()
        .filter(|n| !spool.has(n))
        .collect();
    if names.is_empty() {
        return;
    }
    if let Err(e) = std::fs::create_dir_all(spool.dir()) {
        tracing::debug!(dir = %spool.dir().display(), error = %e, "no WAL prefetch");
        return;
    }
    // The requested segment is written beside them at the same time.
    if !fetch_ahead::room_for(spool.dir(), (names.len() as u64 + 1) * seg_size, reserve) {
        tracing::info!(
            dir = %spool.dir().display(),
            reserve_mib = reserve >> 20,
            "little free space: no WAL prefetch (wal.fetch_reserve_mib)"
        );
        return;
    }
    let spool = Arc::new(spool);
    // Set at the first segment the archive does not have: the ones after it are not
    // there either (yet).
    let ended = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for n in names {
        let (repo, spool, slots, ended) =
            (repo.clone(), spool.clone(), slots.clone(), ended.clone());
        tasks.spawn(async move {
            // The semaphore is fair: segments start in recovery's order.
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            if ended.load(Ordering::Relaxed) {
                return;
            }
            if let Spooled::NotArchived = fetch_into_spool(repo, algorithm, n, spool).await {
                ended.store(true, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The archived object for `name` (under any compression), or None.
async fn open(
    repo: &dyn Repository,
    algorithm: Algorithm,
    name: &str,
) -> anyhow::Result<Option<(String, GetObject)>> {
    let key = layout::wal_key(name, algorithm).expect("classified WAL name");
    match repo.get(&key).await {
        Ok(obj) => Ok(Some((key, obj))),
        Err(RepoError::NotFound { .. }) => {
            // Archived under another compression setting?
            let base = layout::wal_key_base(name).expect("classified WAL name");
            let other = repo
                .list(&base)
                .await?
                .into_iter()
                .find(|o| layout::parse_wal_key(&o.key).is_some_and(|(n, _)| n == name));
            let Some(other) = other else {
                return Ok(None);
            };
            match repo.get(&other.key).await {
                Ok(obj) => Ok(Some((other.key, obj))),
                Err(RepoError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// After the copy `repo` gave of segment `name` was damaged (`damage`): the segment
/// from the first other repository whose copy is sound, saying so.
async fn from_copies(
    repo: &dyn Repository,
    algorithm: Algorithm,
    name: &str,
    dest: &Path,
    damage: anyhow::Error,
) -> anyhow::Result<u64> {
    for (other, copy) in repo.copies() {
        tracing::warn!(wal = %name, repository = %other, "{damage:#}; fetching {name} from repository {other}");
        let again = match open(copy.as_ref(), algorithm, name).await {
            Ok(Some((key, obj))) => write(obj, &key, name, dest).await,
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        match again {
            Ok(n) => {
                tracing::warn!(wal = %name, repository = %other, "restored a sound copy of {name} from repository {other}");
                return Ok(n);
            }
            Err(e) => {
                tracing::warn!(wal = %name, repository = %other, "the copy of {name} in repository {other} is no better: {e:#}")
            }
        }
    }
    Err(damage)
}

/// Write the object to `dest` atomically, verifying its checksum. Returns the size.
async fn write(obj: GetObject, key: &str, name: &str, dest: &Path) -> anyhow::Result<u64> {
    let (_, algorithm) = layout::parse_wal_key(key).expect("listed WAL key");
    let expected = layout::stored_digest(&obj.meta.metadata);
    if expected.is_none() {
        tracing::warn!(key = %key, "no checksum recorded for this WAL object; relying on the compression format's own check");
    }
    transfer::object_to_file(obj, key, algorithm, expected, dest, false)
        .await
        .map_err(|e| e.context(format!("restore {name} from the archive")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_runs_cover_exactly_their_segments() {
        let e = Expected::parse(&[
            "000000010000000000000003..000000010000000000000005".into(),
            "000000020000000000000006..000000020000000000000009".into(),
        ])
        .unwrap();
        assert!(e.covers("000000010000000000000003"));
        assert!(e.covers("000000010000000000000005"));
        assert!(
            !e.covers("000000010000000000000006"),
            "timeline 2 from 6 on"
        );
        assert!(e.covers("000000020000000000000007"));
        assert!(
            !e.covers("00000003000000000000000A"),
            "a newer timeline is probed"
        );
        assert!(
            !e.covers("00000002000000000000000A"),
            "after the plan: the archive's end"
        );
        assert!(!e.covers("00000002.history"));
        assert!(!e.covers("000000010000000000000004.partial"));
        for bad in [
            "000000010000000000000005..000000010000000000000003",
            "000000010000000000000003..000000020000000000000005",
            "00000002.history..00000002.history",
            "nonsense",
        ] {
            assert!(Expected::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
