//! `backupctl restore`: point-in-time recovery from a physical backup (logical restores
//! are in `logical.rs`).
//!
//! 1. Refuse a non-empty target directory or a live postmaster (exit 2).
//! 2. Choose the backup (`recovery::plan`), saying which and why; targets outside the
//!    recoverable window and WAL gaps are refused with the window printed.
//! 3. Extract every tar part in parallel, checking every checksum; on any failure the
//!    half-restored directory is removed again.
//! 4. Write backup_label, tablespace_map, recovery.signal and the recovery settings
//!    (restore_command = this binary's wal-fetch with the same config).
//! 5. With `--start`, start PostgreSQL and follow recovery to its end.

pub mod data_only;
pub mod logical;
pub mod table_clean;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::codec::{self, Digest};
use crate::config::Config;
use crate::manifest::{Catalog, Manifest};
use crate::ops::wal::fetch_ahead;
use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::server::{self, RecoveryEnd, RecoveryReport, Server};
use crate::physical::beneath;
use crate::physical::tarpart::{self, Destination};
use crate::recovery::inventory::WalInventory;
use crate::recovery::lease;
use crate::recovery::plan;
use crate::recovery::target::{parse_time, Target, TargetAction};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, layout, Repository};
use crate::text::shell_quote;
use crate::transfer;

/// `backupctl restore` of a physical backup, as the operation sees it.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The data directory to restore into (empty or absent).
    pub pgdata: Option<PathBuf>,
    pub target_time: Option<String>,
    pub target_lsn: Option<String>,
    pub target_name: Option<String>,
    /// `--target immediate`: stop as soon as the backup is consistent.
    pub target_immediate: bool,
    /// A timeline number or `latest` (the default).
    pub target_timeline: Option<String>,
    /// Force this backup instead of the planner's choice.
    pub backup: Option<String>,
    pub target_action: TargetAction,
    /// Start PostgreSQL and follow recovery to its end.
    pub start: bool,
    /// The copy becomes the cluster's primary and archives into this repository;
    /// otherwise it gets `archive_mode = off`.
    pub new_primary: bool,
    pub port: Option<u16>,
    /// `OLD=NEW` tablespace relocations.
    pub tablespace_map: Vec<String>,
    /// Plan only: restore nothing.
    pub dry_run: bool,
}

/// What a restore did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub backup: String,
    pub reason: String,
    pub pgdata: String,
    pub target: String,
    pub timeline: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
    /// Dry run: where each tablespace would go and the recovery settings that would be
    /// written; nothing was restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRun>,
}

/// The plan of a dry run.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub tablespaces: Vec<(u32, PathBuf)>,
    pub settings: Vec<(String, String)>,
}

/// Restore as `args` asks. `say` gets the progress lines a person at the terminal needs
/// (what is restored and why, how to start it, how recovery ended) as they happen.
pub async fn run(
    cfg: &Config,
    args: &RestoreRequest,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let pgdata = args
        .pgdata
        .clone()
        .ok_or_else(|| crate::user_error!("restore needs --pgdata DIR (or --logical ID)"))?;
    let pgdata = std::path::absolute(&pgdata)?;
    if rustix::process::geteuid().is_root() && !args.dry_run {
        return Err(crate::user_error!(
            "restore must run as the OS user that will own the data directory, not root: \
             e.g. sudo -u postgres backupctl --config {} restore …",
            cfg.origin()
        ));
    }
    check_target_dir(&pgdata)?;
    let target = target_of(args)?;
    let target_timeline = match args.target_timeline.as_deref() {
        None | Some("latest") => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            crate::user_error!("--target-timeline {n:?} must be a timeline number or 'latest'")
        })?),
    };
    let remap = parse_tablespace_map(&args.tablespace_map)?;

    let repo = repo::open_for_reading(cfg, None, true).await?;
    let catalog = Catalog::load(repo.as_ref()).await?;
    if let Some(id) = &args.backup {
        // An unreadable manifest is named, not "does not exist"; so is a broken chain.
        let m = catalog.require(id)?;
        catalog.chain(m).map_err(|why| {
            crate::user_error!("{why}; restore another backup (`backupctl list`)")
        })?;
    }
    // Incremental backups whose chain is broken are left out (and logged).
    let restorable = catalog.restorable();
    // An uninitialised repository simply has no backups: the planner says so.
    let recorded = RepoIdentity::load(repo.as_ref())
        .await?
        .map(|id| id.wal_segment_size);
    let seg_size = catalog.wal_segment_size(recorded)?;
    let inventory = WalInventory::load(repo.as_ref(), seg_size).await?;
    let points = plan::restore_points(&catalog.complete);
    let choice = plan::choose(
        &restorable,
        &inventory,
        &target,
        args.backup.as_deref(),
        target_timeline,
        &points,
    )
    .map_err(|e| crate::user_error!("{e}"))?;
    let m = choice.backup;
    let phys = m.physical.as_ref().expect("physical backup");
    say(&format!("restoring backup {}: {}", m.id, choice.reason));

    // Where each tablespace goes; every destination must be empty.
    let mut ts_dest: HashMap<u32, PathBuf> = HashMap::new();
    for ts in &phys.tablespaces {
        let dest = remap
            .get(&ts.location)
            .or_else(|| remap.get(&ts.oid.to_string()))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&ts.location));
        check_target_dir(&dest).map_err(|e| {
            crate::user_error!(
                "tablespace {} ({}): {e:#}; relocate it with --tablespace-map {}=/new/empty/dir",
                ts.name,
                ts.oid,
                ts.location
            )
        })?;
        ts_dest.insert(ts.oid, dest);
    }
    // The timeline the planner chose, never PostgreSQL's own "latest" (the highest
    // history file in the repository, which may be a throwaway copy's).
    let mut settings = recovery_settings(
        cfg,
        &target,
        args.target_action,
        Some(choice.timeline),
        &pgdata,
        &choice.expected,
    )?;
    if args.new_primary {
        say(&format!(
            "--new-primary: this copy keeps archive_command and archives its new timeline into {}",
            repo.describe()
        ));
    } else {
        // A copy must never archive into the repository it came from: its new timeline
        // would become what "latest" restores, and its WAL would be mistaken for
        // production's.
        settings.push(("archive_mode", "off".into()));
    }
    let mut report = Report {
        backup: m.id.clone(),
        reason: choice.reason.clone(),
        pgdata: pgdata.display().to_string(),
        target: target.describe(),
        timeline: choice.timeline,
        recovery: None,
        dry_run: None,
    };
    if args.dry_run {
        report.dry_run = Some(DryRun {
            tablespaces: ts_dest.into_iter().collect(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
        return Ok(report);
    }

    // Retention (here or on another host) keeps this backup and the WAL after it while
    // the lease is held: until recovery has ended, or the lease expires.
    let held = lease::acquire(repo.as_ref(), &m.id, "restore", cfg.restore.lease).await?;
    let result = async {
        // Planned before the lease existed: the backup may have gone meanwhile.
        if repo.head(&layout::manifest_key(&m.id)).await?.is_none() {
            anyhow::bail!(
                "backup {} was deleted while this restore was being planned (retention?); restore again",
                m.id
            );
        }
        restore_files(cfg, &repo, m, &pgdata, &ts_dest, &settings, true).await
    }
    .await;
    if let Err(e) = result {
        held.release(repo.as_ref()).await;
        return Err(e);
    }
    say(&format!("restored {} into {}", m.id, pgdata.display()));
    if !args.new_primary {
        say(&format!(
            "archive_mode = off: this copy does not archive into {}; if it replaces the primary, \
             restore again with --new-primary (or set archive_mode = on before promoting it)",
            repo.describe()
        ));
    }

    if args.start {
        let bin = PgBin::for_config(&cfg.postgres, Some(m.pg_version_num / 10000))?;
        let log = pgdata.join("log").join("backupctl-recovery.log");
        std::fs::create_dir_all(log.parent().expect("has parent"))?;
        let options = args.port.map(|p| format!("-p {p}")).unwrap_or_default();
        let params = ConnParams::from_config(&cfg.postgres)?;
        let server = Server::start(&bin, &pgdata, &log, &options, params).await?;
        say(&format!(
            "started PostgreSQL on {}; waiting for recovery to finish (log: {})",
            pgdata.display(),
            log.display()
        ));
        let rec = server
            .wait_for_recovery(args.target_action == TargetAction::Shutdown)
            .await?;
        say(&format!(
            "recovery ended ({:?}) after {:.1}s on timeline {}; last replayed commit: {}",
            rec.end,
            rec.seconds,
            rec.timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            rec.last_replayed_commit
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "none".into())
        ));
        if rec.end != RecoveryEnd::Paused {
            // Recovery will not ask for what wal-fetch prefetched, nor for more WAL.
            fetch_ahead::remove_spool(&pgdata.join("pg_wal"));
            held.release(repo.as_ref()).await;
        } else {
            say(&format!(
                "recovery is paused: retention keeps backup {} and its WAL until {} (restore.lease)",
                m.id, held.lease.expires
            ));
        }
        report.recovery = Some(rec);
    } else {
        say(&format!(
            "start it with: pg_ctl -D {} start   (recovery runs to {}); retention keeps backup {} \
             and its WAL until {} (restore.lease)",
            pgdata.display(),
            target.describe(),
            m.id,
            held.lease.expires
        ));
    }
    Ok(report)
}

/// Files in the restored data directory that `write_control_files` writes or edits.
const CONTROL_FILES: [&str; 6] = [
    "backup_label",
    "tablespace_map",
    "postgresql.conf",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// Restore backup `m`'s files into `pgdata` (and tablespaces into `tablespaces`), checking
/// every checksum, and write the control files and recovery `settings`. On failure the
/// destinations (empty or absent before) are emptied again. Shared with verification.
///
/// `durable`: fsync every file and directory before returning (a real restore); a
/// throwaway test restore skips that.
pub async fn restore_files(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    pgdata: &Path,
    tablespaces: &HashMap<u32, PathBuf>,
    settings: &[(&'static str, String)],
    durable: bool,
) -> anyhow::Result<()> {
    let result = async {
        std::fs::create_dir_all(pgdata).with_context(|| format!("create {}", pgdata.display()))?;
        set_mode(pgdata, 0o700)?;
        // Says "interrupted restore" to the next one if this one never finishes.
        beneath::write(
            pgdata,
            RESTORING,
            format!("restore of backup {} by pid {}\n", m.id, std::process::id()).as_bytes(),
        )
        .and_then(|f| f.sync_all())
        .with_context(|| format!("write {RESTORING}"))?;
        if m.incremental().is_some() {
            extract_chain(cfg, repo, m, pgdata, tablespaces, durable).await?;
        } else {
            extract_all(cfg, repo, m, pgdata, tablespaces, durable, None).await?;
        }
        crate::failpoint::point("restore.before-recovery-config");
        write_control_files(m, pgdata, tablespaces, settings)?;
        if durable {
            let dirs: Vec<PathBuf> = std::iter::once(pgdata.to_path_buf())
                .chain(tablespaces.values().cloned())
                .collect();
            let written = pgdata.to_path_buf();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                // The files written here rather than extracted.
                for f in CONTROL_FILES {
                    if let Some(file) = beneath::open_existing(&written, f)? {
                        file.sync_all().with_context(|| format!("fsync {f}"))?;
                    }
                }
                for d in &dirs {
                    tarpart::sync_dirs(d)?;
                }
                Ok(())
            })
            .await??;
        }
        // Last: until now a PostgreSQL started on the directory finds no pg_control and
        // refuses, instead of running crash recovery on a half-restored copy.
        release_pg_control(pgdata)?;
        std::fs::remove_file(pgdata.join(RESTORING))
            .with_context(|| format!("remove {RESTORING}"))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        for dir in std::iter::once(pgdata).chain(tablespaces.values().map(PathBuf::as_path)) {
            empty_dir(dir);
        }
        return Err(e.context(format!(
            "restore backup {} (the partly restored {} was emptied again)",
            m.id,
            pgdata.display()
        )));
    }
    Ok(())
}

fn target_of(args: &RestoreRequest) -> anyhow::Result<Target> {
    Ok(if let Some(t) = &args.target_time {
        Target::Time(parse_time(t).map_err(|e| crate::user_error!("{e}"))?)
    } else if let Some(l) = &args.target_lsn {
        Target::Lsn(
            l.parse()
                .map_err(|e: String| crate::user_error!("--target-lsn: {e}"))?,
        )
    } else if let Some(n) = &args.target_name {
        Target::Name(n.clone())
    } else if args.target_immediate {
        Target::Immediate
    } else {
        Target::Latest
    })
}

/// Refuse a directory with a live postmaster or any content (exit 2). A directory that
/// holds an interrupted restore (pg_control still held back: PostgreSQL cannot start on
/// it, and nothing in it is anyone's data) is emptied first, saying so.
pub fn check_target_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(pid) = server::running_postmaster(dir) {
        return Err(crate::user_error!(
            "a PostgreSQL server (pid {pid}) is running on {}; stop it or restore elsewhere",
            dir.display()
        ));
    }
    if interrupted_restore(dir) {
        tracing::warn!(
            dir = %dir.display(),
            "{} holds an interrupted restore ({RESTORING} present, no {PG_CONTROL}: \
             PostgreSQL could not start on it); emptying it before restoring",
            dir.display()
        );
        empty_dir(dir);
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(crate::user_error!(
                    "refusing to restore into {}: it is not empty; restore into a new or empty directory",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::user_error!("cannot use {}: {e}", dir.display())),
    }
}

fn parse_tablespace_map(args: &[String]) -> anyhow::Result<HashMap<String, PathBuf>> {
    args.iter()
        .map(|a| {
            let (old, new) = a.split_once('=').ok_or_else(|| {
                crate::user_error!("--tablespace-map {a:?} must be OLD=NEW (OLD: location or OID)")
            })?;
            let new = PathBuf::from(new);
            if !new.is_absolute() {
                return Err(crate::user_error!(
                    "--tablespace-map {a:?}: NEW must be an absolute path"
                ));
            }
            Ok((old.trim_end_matches('/').to_string(), new))
        })
        .collect()
}

/// Restore incremental backup `m` in one pass over its chain, newest backup first: each
/// file is written by the newest backup that has it (a whole copy, or its changed blocks
/// with the blocks only older backups have filled in from them), every block once, and
/// nothing the newest backup's file list does not have (dropped tables and databases,
/// removed files) is written at all. Every object's checksum is checked as it is read.
async fn extract_chain(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    pgdata: &Path,
    tablespaces: &HashMap<u32, PathBuf>,
    durable: bool,
) -> anyhow::Result<()> {
    let catalog = Catalog::load(repo.as_ref()).await?;
    let chain = catalog
        .chain(m)
        .map_err(|why| crate::user_error!("{why}; restore another backup (`backupctl list`)"))?;
    tracing::info!(
        backup = %m.id,
        chain = %chain.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(" → "),
        "restoring an incremental backup with its chain, newest first"
    );
    // The list comes from the repository: a name must be a plain relative path.
    let Some(list) = m.physical.as_ref().and_then(|p| p.file_list.as_ref()) else {
        anyhow::bail!("backup {} has no file list", m.id);
    };
    for name in list.keys() {
        let plain = !name.is_empty()
            && name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            return Err(crate::user_error!(
                "the manifest of backup {} lists {name:?}, which is not a relative path in a data directory; the manifest is damaged",
                m.id
            ));
        }
    }
    let link = Arc::new(ChainLink {
        keep: list.keys().cloned().collect(),
        claims: Default::default(),
    });
    for b in chain.iter().rev() {
        extract_all(
            cfg,
            repo,
            b,
            pgdata,
            tablespaces,
            durable,
            Some(link.clone()),
        )
        .await?;
    }
    Ok(())
}

/// What the links of a chain share while it is restored newest first.
struct ChainLink {
    /// The names the restored backup has: nothing else is written.
    keep: std::collections::HashSet<String>,
    claims: crate::physical::incremental::Claims,
}

/// Maps backup entries to the restore directory and tablespace destinations.
struct RestoreDest {
    pgdata: PathBuf,
    tablespaces: HashMap<u32, PathBuf>,
    durable: bool,
    /// Applying an incremental backup of a chain.
    deltas: bool,
    /// Restoring a chain, newest first.
    chain: Option<Arc<ChainLink>>,
}

impl Destination for RestoreDest {
    fn durable(&self) -> bool {
        self.durable
    }
    fn applies_deltas(&self) -> bool {
        self.deltas
    }
    fn claims(&self) -> Option<&crate::physical::incremental::Claims> {
        self.chain.as_ref().map(|c| &c.claims)
    }
    fn skip(&self, name: &str) -> bool {
        // In a chain, what the restored backup does not have (a dropped table, database
        // or tablespace) is not written.
        self.chain.as_ref().is_some_and(|c| !c.keep.contains(name))
    }
    fn root(&self) -> &Path {
        &self.pgdata
    }
    fn place<'a>(&'a self, name: &'a str) -> (&'a Path, &'a str) {
        if name == PG_CONTROL {
            return (&self.pgdata, PG_CONTROL_HELD);
        }
        if let Some(rest) = name.strip_prefix("pg_tblspc/") {
            let (oid, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(dest) = self.tablespace(oid.parse().unwrap_or(0)) {
                return (dest, tail);
            }
        }
        (&self.pgdata, name)
    }
    fn tablespace(&self, oid: u32) -> Option<&Path> {
        self.tablespaces.get(&oid).map(PathBuf::as_path)
    }
}

async fn extract_all(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    pgdata: &Path,
    tablespaces: &HashMap<u32, PathBuf>,
    durable: bool,
    // Part of a chain restored newest first.
    chain: Option<Arc<ChainLink>>,
) -> anyhow::Result<()> {
    let workers = cfg
        .restore
        .workers
        .unwrap_or_else(|| cfg.backup.workers())
        .max(1);
    let dest = Arc::new(RestoreDest {
        pgdata: pgdata.to_path_buf(),
        tablespaces: tablespaces.clone(),
        durable,
        deltas: m.incremental().is_some(),
        chain,
    });
    let stop = transfer::StopFlag::default();
    let mut pending = m.objects.iter();
    let mut running: JoinSet<anyhow::Result<u64>> = JoinSet::new();
    let mut files = 0;
    loop {
        while running.len() < workers {
            let Some(obj) = pending.next() else { break };
            let key = layout::backup_object_key(&m.id, &obj.name);
            let algorithm = codec::algorithm_of(&obj.name);
            let expected = Digest {
                sha256: obj.sha256.clone(),
                size: obj.stored_size,
            };
            let (repo, dest, stop) = (repo.clone(), dest.clone(), stop.clone());
            running.spawn(async move {
                // An error names the object ("read <key>") and the entry. A part
                // damaged in one repository is extracted again from another: its files
                // are rewritten whole.
                let files = transfer::from_a_sound_copy(&repo, &key, |repo| {
                    let (dest, stop, expected) = (dest.clone(), stop.clone(), expected.clone());
                    let key = key.clone();
                    async move {
                        transfer::get_stream(&repo, &key, algorithm, Some(expected), move |r| {
                            Ok(tarpart::extract_part(&mut stop.reader(r), dest.as_ref())?)
                        })
                        .await
                    }
                })
                .await?;
                tracing::debug!(object = %key, files, "part extracted");
                crate::failpoint::point("restore.mid-copy");
                Ok(files)
            });
        }
        match running.join_next().await {
            Some(res) => match res.context("restore worker").and_then(|r| r) {
                Ok(n) => files += n,
                Err(e) => {
                    // Stop the other extractions and let them end before the caller
                    // cleans up, or they would write into the emptied directory.
                    stop.stop();
                    while running.join_next().await.is_some() {}
                    return Err(e);
                }
            },
            None => break,
        }
    }
    tracing::info!(
        files,
        objects = m.objects.len(),
        "extracted and verified every object"
    );
    Ok(())
}

/// The recovery settings for postgresql.auto.conf.
///
/// `expected`: the segments recovery must find (`Choice::expected`), passed to
/// wal-fetch so that a missing one stops recovery instead of ending it early.
pub fn recovery_settings(
    cfg: &Config,
    target: &Target,
    action: TargetAction,
    timeline: Option<u32>,
    pgdata: &Path,
    expected: &[(String, String)],
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let exe = std::env::current_exe().context("find the backupctl executable")?;
    let expect: String = expected
        .iter()
        .map(|(a, z)| format!(" --expect {a}..{z}"))
        .collect();
    // The repository a restore was told to use is the one recovery reads.
    let repo = cfg
        .selected_repository
        .as_ref()
        .map(|r| format!(" --repo {}", shell_quote(r)))
        .unwrap_or_default();
    let restore_command = match cfg.config_arg() {
        Some(config) => format!(
            "{} --config {}{repo} wal-fetch{expect} %f %p",
            shell_quote(&exe.display().to_string()),
            shell_quote(&config.display().to_string())
        ),
        // The embedded default resolves paths against the current directory: run there.
        None => format!(
            "cd {} && {}{repo} wal-fetch{expect} %f {}/%p",
            shell_quote(&std::env::current_dir()?.display().to_string()),
            shell_quote(&exe.display().to_string()),
            shell_quote(&pgdata.display().to_string())
        ),
    };
    let mut s = vec![("restore_command", restore_command)];
    s.extend(target.settings());
    if !matches!(target, Target::Latest) {
        s.push(("recovery_target_action", action.as_str().to_string()));
    }
    s.push((
        "recovery_target_timeline",
        timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "latest".into()),
    ));
    Ok(s)
}

/// Write the control files into the restored `pgdata`. None of them is ever written or
/// read through a symbolic link (a restore never makes one there; one found there is
/// refused): a link to the original server's configuration would have the restore
/// rewrite it.
fn write_control_files(
    m: &Manifest,
    pgdata: &Path,
    tablespaces: &HashMap<u32, PathBuf>,
    settings: &[(&'static str, String)],
) -> anyhow::Result<()> {
    let phys = m.physical.as_ref().expect("physical");
    beneath::write(pgdata, "backup_label", phys.backup_label.as_bytes())
        .context("write backup_label")?;
    if !tablespaces.is_empty() {
        let map: String = tablespaces
            .iter()
            .map(|(oid, path)| format!("{oid} {}\n", path.display()))
            .collect();
        beneath::write(pgdata, "tablespace_map", map.as_bytes()).context("write tablespace_map")?;
    }
    if !beneath::exists(pgdata, "postgresql.conf")? {
        // Debian-style installs keep the configuration outside PGDATA.
        let origin = phys
            .config_file
            .as_deref()
            .unwrap_or("outside the data directory");
        beneath::write(
            pgdata,
            "postgresql.conf",
            format!(
                "# Written by backupctl restore: the original configuration was {origin}.\n\
                 # Review and replace it before using this cluster in production.\n"
            )
            .as_bytes(),
        )?;
        for f in ["pg_hba.conf", "pg_ident.conf"] {
            if !beneath::exists(pgdata, f)? {
                let text = if f == "pg_hba.conf" {
                    "# Written by backupctl restore: local connections for the OS user only.\nlocal all all peer\n"
                } else {
                    ""
                };
                beneath::write(pgdata, f, text.as_bytes())?;
            }
        }
    }
    neutralise_foreign_paths(pgdata)?;
    // Settings a previous restore left behind would clash with ours (two targets).
    let old = beneath::read(pgdata, "postgresql.auto.conf")
        .context("read postgresql.auto.conf")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    // A backup of a standby holds its replication settings: a restored copy (or a
    // verification's scratch server) must never connect to the live primary as a
    // replica, nor take its replication slot.
    let mut text: String = old
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !(key.starts_with("recovery_target") || key == "restore_command")
        })
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if key == "primary_conninfo" || key == "primary_slot_name" {
                format!("# {key} (set on the backed-up standby) left out by backupctl restore\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    text.push_str(&format!(
        "# recovery settings written by backupctl restore of backup {}\n",
        m.id
    ));
    for (k, v) in settings {
        text.push_str(&format!("{k} = {}\n", quote(v)));
    }
    beneath::write(pgdata, "postgresql.auto.conf", text.as_bytes())
        .and_then(|f| f.sync_all())
        .context("write postgresql.auto.conf")?;
    beneath::write(pgdata, "recovery.signal", b"").context("write recovery.signal")?;
    // With standby.signal too, PostgreSQL would stay a standby instead of ending
    // recovery (a backup of a standby has one).
    beneath::remove(pgdata, "standby.signal").context("remove standby.signal")?;
    Ok(())
}

/// A restored postgresql.conf (in `pgdata`) must not point the new server at the
/// original's data directory or pid file: comment those settings out.
fn neutralise_foreign_paths(pgdata: &Path) -> anyhow::Result<()> {
    let Some(text) =
        beneath::read(pgdata, "postgresql.conf").context("read the restored postgresql.conf")?
    else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&text);
    let mut changed = false;
    let out: String = text
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if key == "data_directory" || key == "external_pid_file" {
                changed = true;
                format!(
                    "# {l}    # disabled by backupctl restore: it pointed at the original server\n"
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if changed {
        beneath::write(pgdata, "postgresql.conf", out.as_bytes())
            .context("rewrite the restored postgresql.conf")?;
    }
    Ok(())
}

/// A postgresql.conf string literal.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn set_mode(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("set permissions of {}", dir.display()))
}

/// Where a backup's pg_control is restored.
const PG_CONTROL: &str = "global/pg_control";
/// Where it is held until everything else is restored, written and synced.
const PG_CONTROL_HELD: &str = "global/pg_control.backupctl-restoring";

/// In the restore directory while a restore runs: written first, removed last.
const RESTORING: &str = "backupctl.restore-in-progress";

/// Whether `dir` is what a restore killed before its end leaves behind: its marker, and
/// no pg_control (which a finished restore moves into place just before removing the
/// marker).
fn interrupted_restore(dir: &Path) -> bool {
    dir.join(RESTORING).is_file() && !dir.join(PG_CONTROL).exists()
}

/// Move the held pg_control into place and make the rename durable.
fn release_pg_control(pgdata: &Path) -> anyhow::Result<()> {
    let global = pgdata.join("global");
    std::fs::rename(pgdata.join(PG_CONTROL_HELD), pgdata.join(PG_CONTROL))
        .with_context(|| format!("move {PG_CONTROL} into place in {}", pgdata.display()))?;
    std::fs::File::open(&global)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", global.display()))
}

/// Remove everything inside `dir` (which was empty or absent before the restore).
fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(shell_quote("/usr/bin/backupctl"), "/usr/bin/backupctl");
        assert_eq!(shell_quote("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn tablespace_destinations() {
        let d = RestoreDest {
            pgdata: "/restore".into(),
            tablespaces: [(17000u32, PathBuf::from("/new/ts"))].into_iter().collect(),
            durable: true,
            deltas: false,
            chain: Some(Arc::new(ChainLink {
                keep: ["pg_tblspc", "pg_tblspc/17000/PG_15_202209061/5/16384"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                claims: Default::default(),
            })),
        };
        // In a chain, what the restored backup has not (a dropped tablespace) is skipped.
        assert!(d.skip("pg_tblspc/17001/PG_15_202209061/5/16384"));
        assert!(d.skip("pg_tblspc/17001"));
        assert!(!d.skip("pg_tblspc/17000/PG_15_202209061/5/16384"));
        assert!(!d.skip("pg_tblspc"));
        assert_eq!(
            d.place("base/5/16384"),
            (Path::new("/restore"), "base/5/16384")
        );
        assert_eq!(d.place("pg_tblspc/17000"), (Path::new("/new/ts"), ""));
        assert_eq!(
            d.place("pg_tblspc/17000/PG_15_202209061/5/1"),
            (Path::new("/new/ts"), "PG_15_202209061/5/1")
        );
        // An unknown tablespace stays beneath PGDATA.
        assert_eq!(
            d.place("pg_tblspc/17001/x"),
            (Path::new("/restore"), "pg_tblspc/17001/x")
        );
        assert_eq!(d.tablespace(17000), Some(Path::new("/new/ts")));
        assert!(parse_tablespace_map(&["/old=/new".into()]).is_ok());
        assert!(parse_tablespace_map(&["/old".into()]).is_err());
        assert!(parse_tablespace_map(&["/old=relative".into()]).is_err());
    }

    #[test]
    fn target_dir_checks() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_target_dir(&d.path().join("new")).is_ok());
        assert!(check_target_dir(d.path()).is_ok());
        std::fs::write(d.path().join("x"), "").unwrap();
        let e = check_target_dir(d.path()).unwrap_err();
        assert!(format!("{e:#}").contains("not empty"));
    }
}
