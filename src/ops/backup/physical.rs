//! Physical base backup: the PITR source.
//!
//! Non-exclusive low-level API on one held connection: `pg_backup_start`, a parallel copy
//! of PGDATA (and tablespaces) into compressed, checksummed tar parts, `pg_backup_stop`,
//! then wait until every segment from the start segment to the stop segment is in the
//! repository (PostgreSQL's own wait covers only the stop segment and is unbounded; ours
//! fails after `backup.archive_timeout`, naming the missing segments), and write the
//! manifest last.
//! On failure the backup's objects are deleted and no manifest exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::codec::{Codec, Compressor};
use crate::config::{Config, DataKind};
use crate::manifest::{self, BackupKind, Manifest, ObjectEntry, PhysicalInfo, TablespaceInfo};
use crate::pg::conn::{ConnParams, ServerInfo};
use crate::pg::wal::{Lsn, Segment};
use crate::physical::{scan, tarpart};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, layout, PutOptions, Repository};
use crate::transfer;

/// Which backup an incremental backup holds the changes since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentChoice {
    /// The newest complete, verified physical backup of this cluster and timeline (full
    /// when its chain has `backup.incremental.max_chain` links already).
    Newest,
    /// The newest complete, verified full backup (a differential backup).
    Full,
    /// This backup.
    Id(String),
}

/// Take a physical backup: full, or with `incremental` the blocks changed since the
/// parent it names (full when there is none, saying why).
pub async fn run(
    cfg: &Config,
    label: Option<&str>,
    incremental: Option<&ParentChoice>,
) -> anyhow::Result<Manifest> {
    let params = ConnParams::from_config(&cfg.postgres)?;
    let client = params.connect().await?;
    let info = ServerInfo::query(&client).await?;
    if info.in_recovery {
        tracing::info!(
            server = %params.describe(),
            "the server is a standby: backing up its data directory; the primary (or this standby, with archive_mode = always) archives the WAL"
        );
    }
    let row = client
        .query_one(
            "SELECT current_setting('archive_mode'), current_setting('archive_command'), \
                    current_setting('config_file')",
            &[],
        )
        .await
        .context("read archiving settings")?;
    let (archive_mode, archive_command, config_file): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    if archive_mode == "off" && info.in_recovery {
        // The primary may archive for it; the wait for the backup's WAL below tells.
        tracing::warn!("archive_mode is off on this standby: once promoted it will not archive; set archive_mode = on (or always) and archive_command = 'backupctl … wal-push %p' here too");
    } else if archive_mode == "off" {
        return Err(crate::user_error!(
            "archive_mode is off: a physical backup is useless without archived WAL; \
             set archive_mode = on and archive_command = 'backupctl … wal-push %p' (see `backupctl check`)"
        ));
    }
    if !archive_command.contains("wal-push") {
        tracing::warn!(archive_command = %archive_command, "archive_command does not use backupctl wal-push; the backup will wait for its WAL to appear in the repository anyway");
    }
    let repo = repo::open(cfg).await?;
    // What killed uploads of this host left (a killed backup: up to its size) goes
    // before this backup needs the space.
    crate::repo::leftover::remove_dead_writers(repo.as_ref(), "").await;
    RepoIdentity::ensure(
        repo.as_ref(),
        info.system_identifier,
        info.major(),
        info.wal_segment_size,
        cfg.encryption.enabled(),
    )
    .await?;
    let pgdata = cfg
        .postgres
        .pgdata
        .clone()
        .unwrap_or_else(|| info.data_directory.clone().into());
    std::fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| {
        crate::user_error!(
            "cannot read the data directory {}: {e}; physical backups run on the database host as a user that can read PGDATA (usually postgres), or set postgres.pgdata",
            pgdata.display()
        )
    })?;
    let tablespaces: Vec<TablespaceInfo> = client
        .query(
            "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
            &[],
        )
        .await
        .context("list tablespaces")?
        .iter()
        .map(|r| TablespaceInfo {
            oid: r.get::<_, i64>(0) as u32,
            name: r.get(1),
            location: r.get(2),
        })
        .collect();

    let parent = match incremental {
        Some(choice) => choose_parent(cfg, &repo, &info, choice).await?,
        None => None,
    };
    // Page LSNs show every change only when hint-bit-only changes are WAL-logged: without
    // that, VACUUM sets a heap page's all-visible flag without moving its LSN, and a
    // restore would pair an old heap page with a visibility map that says all-visible,
    // which later inserts would not clear (see docs/incremental.md).
    let row = client
        .query_one(
            "SELECT current_setting('wal_log_hints') = 'on' OR current_setting('data_checksums') = 'on', \
                    coalesce(current_setting('summarize_wal', true), 'off') = 'on'",
            &[],
        )
        .await
        .context("read wal_log_hints, data_checksums and summarize_wal")?;
    let (page_lsn_safe, summarizing): (bool, bool) = (row.get(0), row.get(1));
    let summaries_expected = summarizing && info.major() >= crate::pg::walsummary::FIRST_MAJOR;
    let parent = match parent {
        Some(_) if !page_lsn_safe && !summaries_expected => {
            let fix = if info.major() >= crate::pg::walsummary::FIRST_MAJOR {
                "set summarize_wal = on (a reload), or wal_log_hints = on (a restart)"
            } else {
                "set wal_log_hints = on (a restart; data checksums do it too)"
            };
            if matches!(incremental, Some(ParentChoice::Id(_))) {
                return Err(crate::user_error!(
                    "an incremental backup needs changes the page LSNs do not show on this server \
                     (wal_log_hints and data checksums are off, no WAL summaries): {fix}"
                ));
            }
            tracing::warn!("wal_log_hints and data checksums are off and there are no WAL summaries: page LSNs do not show every change (VACUUM's all-visible flags), so the backup is taken full; for incremental backups {fix}");
            None
        }
        other => other,
    };
    let block_size: u32 = client
        .query_one("SELECT current_setting('block_size')::int4", &[])
        .await
        .context("read block_size")?
        .get::<_, i32>(0) as u32;
    let make_id = |t| match parent {
        Some(_) => manifest::incremental_backup_id(t),
        None => manifest::backup_id(t, BackupKind::Physical),
    };
    // A fresh id (ids have one-second resolution).
    let mut start_time = Utc::now();
    let mut id = make_id(start_time);
    while !repo.list(&layout::backup_prefix(&id)).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        start_time = Utc::now();
        id = make_id(start_time);
    }
    if parent.is_some() {
        // Binaries that cannot restore a chain must refuse the repository before they
        // delete a parent (retention) or restore one as if it were whole.
        RepoIdentity::require_incremental(repo.as_ref()).await?;
    }
    // Instrument the futures rather than entering the span across awaits: an entered
    // guard held over an await leaks the span into other tasks on the same thread (the
    // daemon runs several jobs, each in its own span).
    let kind = if parent.is_some() {
        "incremental"
    } else {
        "physical"
    };
    let span = tracing::info_span!("backup", id = %id, kind);
    span.in_scope(|| tracing::info!(pgdata = %pgdata.display(), "starting physical backup"));

    let result = async {
        let row = client
            .query_one(
                "SELECT pg_backup_start($1, $2)::text",
                &[&id, &cfg.backup.fast_checkpoint],
            )
            .await
            .context("pg_backup_start")?;
        let start_lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        tracing::info!(start_lsn = %start_lsn, "backup started");
        crate::failpoint::point("backup.started");

        let codec = Codec::from_config(&cfg.compression.for_kind(DataKind::Physical));
        let summary = match &parent {
            Some(p) => {
                let since = p.physical.as_ref().expect("physical").start_lsn;
                summaries(&client, &info, since, start_lsn).await?
            }
            None => None,
        };
        if parent.is_some() && summary.is_none() && !page_lsn_safe {
            anyhow::bail!(
                "the WAL summaries do not cover the range since the parent, and page LSNs do not \
                 show every change with wal_log_hints and data checksums off: take a full backup \
                 (--kind physical), or set wal_log_hints = on"
            );
        }
        let since = parent.as_ref().map(|p| DeltaBase {
            summary,
            since: p.physical.as_ref().expect("physical").start_lsn,
            sizes: p
                .physical
                .as_ref()
                .and_then(|p| p.file_list.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(name, size)| Some((name.clone(), (*size)?)))
                .collect(),
            block_size,
        });
        let copied = copy_data(&repo, &id, &pgdata, codec, cfg, since.as_ref()).await?;
        let (objects, files) = (copied.objects, copied.files);

        let row = client
            .query_one(
                // On a standby, the newest commit replayed may carry a later time (the
                // primary's clock) than the standby's own clock: a restore to a time
                // must not pick this backup for a target before its consistency point.
                "SELECT s.lsn::text, s.labelfile, s.spcmapfile, \
                        greatest(clock_timestamp(), pg_last_xact_replay_timestamp()) \
                 FROM pg_backup_stop(false) s",
                &[],
            )
            .await
            .context("pg_backup_stop")?;
        let stop_lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let backup_label: String = row.get(1);
        let tablespace_map: Option<String> = row.get(2);
        let stop_time: chrono::DateTime<Utc> = row.get(3);
        let timeline = label_timeline(&backup_label).unwrap_or(info.timeline);
        if info.in_recovery {
            same_timeline_at_stop(&client, timeline).await?;
        }
        let seg = info.wal_segment_size;
        let start_wal = Segment::containing(timeline, start_lsn, seg).name(seg);
        let stop_wal = Segment::containing(timeline, Lsn(stop_lsn.0.saturating_sub(1)), seg).name(seg);
        tracing::info!(stop_lsn = %stop_lsn, stop_wal = %stop_wal, "backup stopped; waiting for its WAL to be archived");
        let first = Segment::containing(timeline, start_lsn, seg).segno;
        let last = Segment::containing(timeline, Lsn(stop_lsn.0.saturating_sub(1)), seg).segno;
        let needed: Vec<String> = (first..=last.max(first))
            .map(|segno| Segment { tli: timeline, segno }.name(seg))
            .collect();
        if info.in_recovery {
            ask_primary_to_end_segment(cfg, &info, stop_lsn).await;
        }
        // The backup's WAL is awaited where it is archived: this repository, or (when it
        // receives no WAL) the ones that do.
        let wal_repo = if cfg.repository.kinds.contains(&crate::config::StoredKind::Wal) {
            repo.clone()
        } else {
            repo::open_for_reading(cfg, Some(crate::config::StoredKind::Wal), true).await?
        };
        wait_for_wal(&wal_repo, &client, &needed, cfg.backup.archive_timeout, info.in_recovery)
            .await?;

        let incremental = parent.as_ref().map(|p| manifest::IncrementalInfo {
            parent: p.id.clone(),
            since_lsn: p.physical.as_ref().expect("physical").start_lsn,
            chain_length: p.incremental().map_or(0, |i| i.chain_length) + 1,
            method: if since.as_ref().is_some_and(|b| b.summary.is_some()) {
                "wal-summary".into()
            } else {
                "page-lsn".into()
            },
            delta_files: copied.deltas,
            unchanged_files: copied.unchanged,
        });
        let m = Manifest {
            format: if incremental.is_some() {
                manifest::FORMAT_INCREMENTAL
            } else {
                manifest::FORMAT
            },
            id: id.clone(),
            kind: BackupKind::Physical,
            label: label.map(str::to_string),
            host: crate::host::local_hostname(),
            cluster: cfg.repository.cluster.clone(),
            pg_version: info.version.clone(),
            pg_version_num: info.version_num,
            system_identifier: info.system_identifier.to_string(),
            start_time,
            stop_time,
            compression: codec,
            objects,
            physical: Some(PhysicalInfo {
                timeline,
                start_lsn,
                stop_lsn,
                start_wal,
                stop_wal,
                wal_segment_size: seg,
                pgdata: pgdata.display().to_string(),
                tablespaces: tablespaces.clone(),
                backup_label,
                tablespace_map: tablespace_map.filter(|m| !m.trim().is_empty()),
                files,
                config_file: Some(config_file.clone()),
                file_list: Some(copied.list),
                incremental,
            }),
            logical: None,
            restore_point: None,
            verification: None,
        };
        crate::failpoint::point("backup.before-manifest");
        m.store(repo.as_ref()).await?;
        crate::failpoint::point("backup.after-manifest");
        anyhow::Ok(m)
    }
    .instrument(span.clone())
    .await;

    match result {
        Ok(m) => {
            span.in_scope(|| {
                tracing::info!(
                    stored = m.stored_bytes(),
                    original = m.original_bytes(),
                    "physical backup complete"
                )
            });
            Ok(m)
        }
        Err(e) => {
            // The session ending aborts the backup in PostgreSQL; remove what we stored.
            drop(client);
            remove_partial(repo.as_ref(), &id)
                .instrument(span.clone())
                .await;
            Err(e.context(format!("physical backup {id}")))
        }
    }
}

/// What an incremental backup compares with: its parent's start LSN and file sizes,
/// and the server's WAL summaries of the range when they cover it (with the number of
/// blocks in a relation segment).
struct DeltaBase {
    summary: Option<(crate::pg::walsummary::Changes, u32)>,
    since: Lsn,
    sizes: std::collections::HashMap<String, u64>,
    block_size: u32,
}

/// What [`copy_data`] stored.
struct Copied {
    objects: Vec<ObjectEntry>,
    files: u64,
    deltas: u64,
    unchanged: u64,
    /// The backup's file set (see [`PhysicalInfo::file_list`]).
    list: manifest::FileList,
}

/// How long an incremental backup waits for the WAL summarizer to reach its start.
const SUMMARY_WAIT: Duration = Duration::from_secs(30);

/// On PostgreSQL 17 and later with `summarize_wal = on`: the server's WAL summaries of
/// `[since, upto)` (the parent's start to this backup's start), with the blocks per
/// relation segment; `None` (said in the log) when the server has none that cover the
/// range, and the backup reads every page's LSN instead.
async fn summaries(
    client: &tokio_postgres::Client,
    info: &ServerInfo,
    since: Lsn,
    upto: Lsn,
) -> anyhow::Result<Option<(crate::pg::walsummary::Changes, u32)>> {
    use crate::pg::walsummary;
    let major = info.major();
    if major < walsummary::FIRST_MAJOR {
        return Ok(None);
    }
    if !walsummary::wait_summarized(client, major, upto, SUMMARY_WAIT).await? {
        tracing::info!(
            "no WAL summaries up to the backup's start {upto} (summarize_wal = off, or the summarizer is behind): reading every page's LSN instead"
        );
        return Ok(None);
    }
    match walsummary::changed_blocks(client, info.timeline, since, upto).await? {
        Ok(changes) => {
            let seg_blocks: i64 = client
                .query_one(
                    // In blocks: pg_settings gives segment_size in units of the block size.
                    "SELECT setting::int8 FROM pg_settings WHERE name = 'segment_size'",
                    &[],
                )
                .await
                .context("read segment_size")?
                .get(0);
            tracing::info!(
                summaries = changes.summaries.len(),
                forks = changes.forks.len(),
                "changed blocks from the server's WAL summaries: unchanged relation files are not read"
            );
            Ok(Some((changes, seg_blocks as u32)))
        }
        Err(why) => {
            tracing::info!("WAL summaries do not cover the range since the parent ({why}): reading every page's LSN instead");
            Ok(None)
        }
    }
}

/// The parent an incremental backup asked for with `choice`, or `None` (a full backup,
/// the log saying why) when there is none to take.
async fn choose_parent(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    info: &ServerInfo,
    choice: &ParentChoice,
) -> anyhow::Result<Option<Manifest>> {
    let catalog = manifest::Catalog::load(repo.as_ref()).await?;
    let sysid = info.system_identifier.to_string();
    match pick_parent(
        &catalog,
        &sysid,
        info.timeline,
        choice,
        cfg.backup.incremental.max_chain,
    ) {
        Ok(Picked::Parent(m)) => {
            tracing::info!(parent = %m.id, "incremental backup: storing what changed since the parent's start");
            Ok(Some(m.clone()))
        }
        Ok(Picked::Full(why)) => {
            tracing::info!("{why}: taking a full backup");
            Ok(None)
        }
        Err(e) => Err(crate::user_error!("{e}")),
    }
}

/// What [`pick_parent`] decided.
#[derive(Debug, PartialEq)]
enum Picked<'a> {
    Parent(&'a Manifest),
    /// Take a full backup, for this reason.
    Full(String),
}

/// The parent `choice` names among `catalog`'s backups, for a backup of the cluster
/// `sysid` on `timeline`: pure, so that every rule has a table-driven test. `Err`: an
/// explicit `--parent ID` that cannot be a parent, with the reason and the fix.
fn pick_parent<'a>(
    catalog: &'a manifest::Catalog,
    sysid: &str,
    timeline: u32,
    choice: &ParentChoice,
    max_chain: u32,
) -> Result<Picked<'a>, String> {
    // Why `m` cannot be the parent, if it cannot.
    let unfit = |m: &Manifest| -> Option<String> {
        let Some(p) = m.physical.as_ref() else {
            return Some("it is not a physical backup".into());
        };
        if m.system_identifier != sysid {
            return Some(format!(
                "it is of another cluster (system identifier {})",
                m.system_identifier
            ));
        }
        if p.timeline != timeline {
            return Some(format!(
                "it is on timeline {}, the server on {timeline} (the first backup on a new timeline is full)",
                p.timeline
            ));
        }
        if p.file_list.is_none() {
            return Some("it was taken before incremental backups existed (no file list)".into());
        }
        catalog.chain(m).err()
    };
    let usable = |m: &&Manifest| m.is_verified_ok() && unfit(m).is_none();
    match choice {
        ParentChoice::Id(id) => {
            let m = catalog.require(id).map_err(|e| format!("{e:#}"))?;
            if let Some(why) = unfit(m) {
                return Err(format!(
                    "backup {id} cannot be the parent of an incremental backup: {why}; \
                     give another with --parent ID, or --parent full"
                ));
            }
            if m.verification
                .as_ref()
                .is_some_and(|v| v.outcome == manifest::Outcome::Failed)
            {
                return Err(format!(
                    "backup {id} failed its verification and cannot be a parent; give another \
                     with --parent ID, or take a full backup"
                ));
            }
            Ok(Picked::Parent(m))
        }
        ParentChoice::Full => Ok(catalog
            .complete
            .iter()
            .rev()
            .filter(|m| m.incremental().is_none())
            .find(usable)
            .map(Picked::Parent)
            .unwrap_or_else(|| {
                Picked::Full(format!(
                    "no complete, verified full physical backup of this cluster on timeline \
                     {timeline} to be the parent of a differential backup"
                ))
            })),
        ParentChoice::Newest => {
            let Some(m) = catalog.complete.iter().rev().find(usable) else {
                return Ok(Picked::Full(format!(
                    "no complete, verified physical backup of this cluster on timeline \
                     {timeline} to be the parent of an incremental backup"
                )));
            };
            let links = m.incremental().map_or(0, |i| i.chain_length);
            if links >= max_chain {
                return Ok(Picked::Full(format!(
                    "the newest backup {} ends a chain of {links} incremental backups \
                     (backup.incremental.max_chain = {max_chain})",
                    m.id
                )));
            }
            Ok(Picked::Parent(m))
        }
    }
}

/// Copy PGDATA into tar parts with `backup.workers` parts in flight, then
/// `global/pg_control` alone in a last part. A restore of a standby's backup ends its
/// consistency wait at the minimum recovery point in the copied pg_control, so that copy
/// must be taken after every data file (as pg_basebackup does); on a primary the order
/// does not matter and the same path is kept.
async fn copy_data(
    repo: &Arc<dyn Repository>,
    id: &str,
    pgdata: &std::path::Path,
    codec: Codec,
    cfg: &crate::config::Config,
    base: Option<&DeltaBase>,
) -> anyhow::Result<Copied> {
    let dir = pgdata.to_path_buf();
    let mut entries = tokio::task::spawn_blocking(move || scan::scan(&dir))
        .await?
        .with_context(|| format!("scan {}", pgdata.display()))?;
    let mut list: manifest::FileList = entries
        .iter()
        .filter(|e| !matches!(e.kind, scan::EntryKind::File { .. }))
        .map(|e| (e.name.clone(), None))
        .collect();
    if let Some(base) = base {
        // A relation file the parent had is stored as its changed blocks; any other
        // file whole.
        for e in &mut entries {
            if !matches!(e.kind, scan::EntryKind::File { .. })
                || !crate::physical::incremental::is_block_file(&e.name)
            {
                continue;
            }
            use crate::physical::incremental::{self as inc, ChangedBlocks};
            let Some(&parent_size) = base.sizes.get(&e.name) else {
                continue;
            };
            let how = match (&base.summary, inc::relation_of(&e.name)) {
                (Some((changes, seg_blocks)), Some((tablespace, database, relfilenode, segno))) => {
                    let fork = crate::pg::walsummary::RelFork {
                        tablespace,
                        database,
                        relfilenode,
                        fork: 0,
                    };
                    match changes.forks.get(&fork) {
                        Some(c) => inc::segment_changes(
                            &c.blocks,
                            c.limit,
                            segno,
                            *seg_blocks,
                            parent_size,
                        ),
                        None => ChangedBlocks::Listed {
                            blocks: vec![],
                            limit: None,
                            parent_size,
                        },
                    }
                }
                _ => ChangedBlocks::PageLsn {
                    since: base.since,
                    parent_size,
                },
            };
            e.delta = Some(inc::DeltaPlan {
                how,
                block_size: base.block_size,
            });
        }
    }
    let (control, entries): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| e.name == tarpart::PG_CONTROL);
    let total: u64 = entries.iter().map(scan::file_size).sum();
    let workers = cfg.backup.workers();
    let n = scan::part_count(total, workers, cfg.backup.part_size_mib << 20);
    let parts = scan::plan_parts(entries, n);
    tracing::info!(
        bytes = total,
        parts = parts.len() + usize::from(!control.is_empty()),
        workers,
        "copying data directory"
    );

    // One set of compression threads for all parts, so that a part that compresses slowly
    // gets every core once the others are done.
    let compressor = Compressor::shared(codec, workers).context("start compression threads")?;
    let stop = transfer::StopFlag::default();
    let store = |i: usize, part: Vec<scan::Entry>| {
        let name = format!("base.{i}.tar{}", codec.suffix());
        let key = layout::backup_object_key(id, &name);
        let (repo, stop, compressor) = (repo.clone(), stop.clone(), compressor.clone());
        async move {
            let (stored, stats) =
                transfer::put_stream(&repo, &key, compressor, PutOptions::default(), move |w| {
                    Ok(tarpart::write_part(&part, &mut stop.writer(w))?)
                })
                .await
                .with_context(|| format!("store {name}"))?;
            anyhow::Ok((
                ObjectEntry {
                    name,
                    sha256: stored.stored.sha256,
                    stored_size: stored.stored.size,
                    size: stored.size,
                },
                stats,
            ))
        }
    };
    let last = parts.len();
    let mut pending = parts.into_iter().enumerate();
    let mut running: JoinSet<anyhow::Result<(ObjectEntry, tarpart::PartStats)>> = JoinSet::new();
    let mut objects = vec![];
    let mut all = tarpart::PartStats::default();
    let mut add = |n: tarpart::PartStats| {
        all.files += n.files;
        all.deltas += n.deltas;
        all.unchanged += n.unchanged;
        list.extend(n.copied.into_iter().map(|(name, size)| (name, Some(size))));
    };
    loop {
        while running.len() < workers {
            let Some((i, part)) = pending.next() else {
                break;
            };
            running.spawn(store(i, part));
        }
        match running.join_next().await {
            Some(res) => match res.context("copy worker").and_then(|r| r) {
                Ok((obj, n)) => {
                    tracing::debug!(object = %obj.name, stored = obj.stored_size, "part stored");
                    objects.push(obj);
                    add(n);
                }
                Err(e) => {
                    // Stop the other parts and let them end before the caller deletes them.
                    stop.stop();
                    while running.join_next().await.is_some() {}
                    return Err(e);
                }
            },
            None => break,
        }
    }
    if !control.is_empty() {
        let (obj, n) = store(last, control).await?;
        tracing::debug!(object = %obj.name, "pg_control stored last");
        objects.push(obj);
        add(n);
    }
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Copied {
        objects,
        files: all.files,
        deltas: all.deltas,
        unchanged: all.unchanged,
        list,
    })
}

/// The segments of `needed` that are not in the repository (one listing per WAL
/// directory they span).
async fn missing_segments(
    repo: &Arc<dyn Repository>,
    needed: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut present = std::collections::BTreeSet::new();
    let dirs: std::collections::BTreeSet<String> = needed
        .iter()
        .filter_map(|s| layout::wal_key_base(s))
        .filter_map(|b| b.rsplit_once('/').map(|(dir, _)| format!("{dir}/")))
        .collect();
    for dir in dirs {
        for o in repo.list(&dir).await? {
            if let Some((name, _)) = layout::parse_wal_key(&o.key) {
                present.insert(name);
            }
        }
    }
    Ok(needed
        .iter()
        .filter(|s| !present.contains(*s))
        .cloned()
        .collect())
}

/// `a` … `b` (or just `a`), for naming a run of missing segments.
fn describe_missing(missing: &[String]) -> String {
    match missing {
        [] => String::new(),
        [one] => one.clone(),
        [first, .., last] => format!("{first} … {last} ({} segments)", missing.len()),
    }
}

/// Wait until every segment from the backup's start segment to its stop segment is in
/// the repository (not only the stop segment: wal-push stores files ahead in parallel,
/// so a segment in between can still be missing when the last one has arrived). On
/// timeout say which are missing and what the archiver reports.
async fn wait_for_wal(
    repo: &Arc<dyn Repository>,
    client: &tokio_postgres::Client,
    needed: &[String],
    timeout: Duration,
    standby: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut said = false;
    loop {
        let missing = missing_segments(repo, needed).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if standby && !said && started.elapsed() >= STANDBY_WAIT_NOTE {
            said = true;
            tracing::info!(
                missing = %describe_missing(&missing),
                "still waiting for the backup's WAL: on a standby its last segment is archived once the primary ends it (archive_timeout on the primary, or set postgres.primary_conninfo)"
            );
        }
        if started.elapsed() >= timeout {
            let archiver = client
                .query_one(
                    "SELECT coalesce(last_failed_wal, '-'), coalesce(last_failed_time::text, '-'), failed_count \
                     FROM pg_stat_archiver",
                    &[],
                )
                .await
                .map(|r| {
                    format!(
                        "pg_stat_archiver: {} failures, last failed {} at {}",
                        r.get::<_, i64>(2),
                        r.get::<_, String>(0),
                        r.get::<_, String>(1)
                    )
                })
                .unwrap_or_default();
            let fix = if standby {
                "The server is a standby: the primary archives this WAL (or the standby, with \
                 archive_mode = always), and the last segment only once the primary ends it. \
                 Check archiving with `backupctl check` against the primary, and set \
                 postgres.primary_conninfo (or archive_timeout on the primary)"
            } else {
                "Check archive_command with `backupctl check` and the PostgreSQL log"
            };
            anyhow::bail!(
                "the backup's WAL is not all in the repository after {timeout:?} (backup.archive_timeout): \
                 {} missing between its start segment {} and stop segment {}; {archiver}. \
                 The backup is not complete (no manifest written). {fix}",
                describe_missing(&missing),
                needed.first().map(String::as_str).unwrap_or("-"),
                needed.last().map(String::as_str).unwrap_or("-"),
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// A standby that changed timeline during its backup (its upstream was promoted) or
/// was promoted itself once the backup stopped ends the backup on another timeline than
/// it started, and the WAL it needs is then partly on each. That is refused, plainly:
/// the next backup is taken whole on the new timeline.
async fn same_timeline_at_stop(
    client: &tokio_postgres::Client,
    start_tli: u32,
) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), min_recovery_end_timeline FROM pg_control_recovery()",
            &[],
        )
        .await
        .context("read the standby's recovery state at the backup's stop")?;
    let (in_recovery, tli): (bool, i32) = (row.get(0), row.get(1));
    if !in_recovery {
        anyhow::bail!(
            "the standby was promoted as its backup ended: the backup's WAL is split between two \
             timelines. No manifest was written; take the backup again (the server is now a primary)"
        );
    }
    // 0: no minimum recovery point recorded yet, nothing to compare.
    if tli != 0 && tli as u32 != start_tli {
        anyhow::bail!(
            "the standby moved from timeline {start_tli} to {tli} during its backup (its upstream \
             was promoted). No manifest was written; take the backup again"
        );
    }
    Ok(())
}

/// How long a backup of a standby waits for its WAL before it says why it may wait long.
const STANDBY_WAIT_NOTE: Duration = Duration::from_secs(10);

/// A backup of a standby ends inside a segment the primary is still writing, and
/// neither the primary nor a standby with `archive_mode = always` archives a segment
/// before it is complete. With `postgres.primary_conninfo`, ask the primary to end it
/// now (`pg_switch_wal()`, only while the primary is still in that segment). Failing
/// that, the wait that follows says what is missing: this only logs.
async fn ask_primary_to_end_segment(cfg: &Config, standby: &ServerInfo, stop_lsn: Lsn) {
    let Some(conninfo) = &cfg.postgres.primary_conninfo else {
        return;
    };
    let result = async {
        let (_, client) =
            crate::pg::conn::connect_primary(&cfg.postgres, conninfo, standby.system_identifier)
                .await?;
        let current: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .context("read the primary's WAL position")?
            .get(0);
        let current: Lsn = current.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let seg = standby.wal_segment_size;
        let stop_segno = Lsn(stop_lsn.0.saturating_sub(1)).0 / seg;
        if current.0 / seg > stop_segno {
            return anyhow::Ok(false);
        }
        client
            .execute("SELECT pg_switch_wal()", &[])
            .await
            .context("pg_switch_wal() (needs superuser or EXECUTE on pg_switch_wal)")?;
        anyhow::Ok(true)
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!("asked the primary to end the backup's last WAL segment (pg_switch_wal)")
        }
        Ok(false) => tracing::debug!("the primary has ended the backup's last WAL segment already"),
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "cannot ask the primary (postgres.primary_conninfo) to end the backup's last WAL segment; waiting for it to be archived anyway"
        ),
    }
}

/// `START TIMELINE: 1` from a backup_label.
fn label_timeline(label: &str) -> Option<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Delete every object of an unfinished backup (best effort; retention catches leftovers).
pub async fn remove_partial(repo: &dyn Repository, id: &str) {
    match repo.list(&layout::backup_prefix(id)).await {
        Ok(objs) => {
            let keys: Vec<String> = objs.into_iter().map(|o| o.key).collect();
            if let Err(e) = repo.delete_many(&keys).await {
                tracing::warn!(error = %e, "could not remove the unfinished backup's objects; retention removes them later");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list the unfinished backup's objects"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_runs_are_named() {
        let m: Vec<String> = ["000000010000000000000003", "000000010000000000000004"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            describe_missing(&m),
            "000000010000000000000003 … 000000010000000000000004 (2 segments)"
        );
        assert_eq!(describe_missing(&m[..1]), "000000010000000000000003");
    }

    /// Backups: `f1` full verified, `i1` incremental on it verified, `i2` on `i1` not
    /// verified, `f2` on timeline 2, `old` without a file list, `bad` failed.
    fn catalog() -> manifest::Catalog {
        use crate::test_fixtures::{manifest, physical_info, verification};
        let t = |m: i64| {
            chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + chrono::Duration::minutes(m)
        };
        let b = |id: &str,
                 min: i64,
                 seg: u64,
                 tli: u32,
                 ok: Option<manifest::Outcome>,
                 parent: Option<(&str, u64, u32)>| {
            let mut m = manifest(id, BackupKind::Physical, t(min), t(min + 1));
            let mut p = physical_info(tli, seg, seg);
            p.file_list = Some(Default::default());
            p.incremental = parent.map(|(parent, pseg, n)| manifest::IncrementalInfo {
                parent: parent.into(),
                since_lsn: physical_info(tli, pseg, pseg).start_lsn,
                chain_length: n,
                method: "page-lsn".into(),
                delta_files: 0,
                unchanged_files: 0,
            });
            m.physical = Some(p);
            m.verification = ok.map(|o| verification(t(min + 2), o, 1.0));
            m
        };
        use manifest::Outcome::{Failed, Ok as Good};
        let mut old = b("old", 0, 1, 1, Some(Good), None);
        old.physical.as_mut().unwrap().file_list = None;
        manifest::Catalog {
            complete: vec![
                old,
                b("f1", 10, 2, 1, Some(Good), None),
                b("i1", 20, 3, 1, Some(Good), Some(("f1", 2, 1))),
                b("bad", 25, 4, 1, Some(Failed), None),
                b("i2", 30, 5, 1, None, Some(("i1", 3, 2))),
                b("f2", 40, 6, 2, Some(Good), None),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_parent_is_the_newest_verified_backup_of_the_timeline_within_max_chain() {
        let c = catalog();
        let id = |p: Result<Picked, String>| match p {
            Ok(Picked::Parent(m)) => m.id.clone(),
            Ok(Picked::Full(why)) => format!("full: {why}"),
            Err(e) => format!("error: {e}"),
        };
        let newest = ParentChoice::Newest;
        // i2 is not verified, bad failed: i1.
        assert_eq!(id(pick_parent(&c, "1", 1, &newest, 7)), "i1");
        // i1 is the first link: with max_chain 1 the backup is full.
        assert!(id(pick_parent(&c, "1", 1, &newest, 1)).contains("max_chain = 1"));
        // --parent full: the newest verified full one on the timeline.
        assert_eq!(id(pick_parent(&c, "1", 1, &ParentChoice::Full, 7)), "f1");
        assert_eq!(id(pick_parent(&c, "1", 2, &newest, 7)), "f2");
        // Another timeline or cluster: nothing fits, full.
        assert!(id(pick_parent(&c, "1", 3, &newest, 7)).starts_with("full: no complete, verified"));
        assert!(id(pick_parent(&c, "9", 1, &newest, 7)).starts_with("full:"));
        // --parent ID: unverified is allowed, failed, foreign or list-less is refused.
        let named = |s: &str| ParentChoice::Id(s.into());
        assert_eq!(id(pick_parent(&c, "1", 1, &named("i2"), 7)), "i2");
        assert!(id(pick_parent(&c, "1", 1, &named("bad"), 7)).contains("failed its verification"));
        assert!(id(pick_parent(&c, "1", 1, &named("f2"), 7)).contains("timeline 2"));
        assert!(id(pick_parent(&c, "1", 1, &named("old"), 7)).contains("no file list"));
        assert!(id(pick_parent(&c, "1", 1, &named("nope"), 7)).contains("does not exist"));
        // A broken chain: i1's parent gone, so neither i1 nor i2 can be a parent.
        let mut broken = catalog();
        broken.complete.retain(|m| m.id != "f1");
        assert!(id(pick_parent(&broken, "1", 1, &newest, 7)).starts_with("full:"));
        assert!(id(pick_parent(&broken, "1", 1, &named("i2"), 7)).contains("is missing"));
    }

    #[test]
    fn timeline_from_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-22 10:00:00 UTC\nLABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(3));
        assert_eq!(label_timeline("nothing"), None);
    }
}
