//! `backupctl info [ID]`: one backup in detail (`--json`: its manifest), or the
//! repository summary.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::InfoArgs;
use crate::commands::list::{print_windows, BackupLine};
use crate::commands::status::{human_bytes, RepoStatus, WalSummary};
use crate::commands::Ctx;
use crate::daemon::jobs::JobKind;
use crate::daemon::state::{self, JobHistory};
use crate::manifest::{BackupKind, Manifest};
use crate::recovery::inventory::Gap;
use crate::recovery::plan::Window;
use crate::repo::{self, identity::RepoIdentity};

#[derive(Serialize)]
struct Summary {
    repository: String,
    identity: Option<RepoIdentity>,
    backups: usize,
    newest_physical: Option<BackupLine>,
    newest_logical: Option<BackupLine>,
    recoverable_windows: Vec<Window>,
    wal_gaps: Vec<String>,
    wal: WalSummary,
    incomplete_backups: Vec<String>,
    daemon: DaemonView,
}

/// The daemon's view: its job history (`backup.state_dir`) and this config's schedule.
#[derive(Serialize)]
struct DaemonView {
    state_file: String,
    /// Why the history could not be read (then `jobs` shows schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    history_error: Option<String>,
    /// When the daemon last wrote its history (absent: it never ran here).
    updated: Option<DateTime<Utc>>,
    pid: Option<u32>,
    timezone: String,
    jobs: Vec<DaemonJob>,
}

#[derive(Serialize)]
struct DaemonJob {
    job: JobKind,
    /// The cron expression in [schedule]; absent = not scheduled.
    schedule: Option<String>,
    next_run: Option<DateTime<Utc>>,
    #[serde(flatten)]
    history: JobHistory,
}

fn daemon_view(cfg: &crate::config::Config) -> DaemonView {
    // The history may be unreadable to this user (state_dir is the daemon's, mode 0700):
    // say so instead of failing the whole summary.
    let (mut h, history_error) = match state::load(&cfg.backup.state_dir) {
        Ok(h) => (h, None),
        Err(e) => (state::History::default(), Some(format!("{e:#}"))),
    };
    // A run whose process died is not running any more.
    h.clear_dead_runs();
    let tz: chrono_tz::Tz = cfg.schedule.timezone.parse().unwrap_or(chrono_tz::UTC);
    let now = Utc::now().with_timezone(&tz);
    let scheduled: Vec<(&str, &str)> = cfg.schedule.entries();
    let mut jobs = vec![];
    for kind in JobKind::ALL {
        let expr = scheduled
            .iter()
            .find(|(k, _)| *k == kind.as_str())
            .map(|(_, e)| e.to_string());
        let history = h.job(kind).cloned();
        if expr.is_none() && history.is_none() {
            continue;
        }
        jobs.push(DaemonJob {
            job: kind,
            next_run: expr
                .as_deref()
                .and_then(|e| crate::schedule::next_run(e, &now))
                .map(|t| t.with_timezone(&Utc)),
            schedule: expr,
            history: history.unwrap_or_default(),
        });
    }
    DaemonView {
        state_file: state::path(&cfg.backup.state_dir).display().to_string(),
        history_error,
        updated: h.updated,
        pid: h.pid,
        timezone: cfg.schedule.timezone.clone(),
        jobs,
    }
}

pub async fn run(ctx: &Ctx, args: InfoArgs) -> anyhow::Result<()> {
    let repo = repo::open(&ctx.cfg).await?;
    if let Some(id) = args.id {
        let m = Manifest::load(repo.as_ref(), &id).await?.ok_or_else(|| {
            crate::user_error!(
                "backup {id} does not exist or is incomplete; `backupctl list` shows the backups"
            )
        })?;
        if ctx.json {
            return ctx.print_json(&m);
        }
        print_backup(&m);
        return Ok(());
    }
    let st = RepoStatus::load(repo.as_ref()).await?;
    let newest = |k: BackupKind| st.catalog.of_kind(k).last().map(BackupLine::of);
    let s = Summary {
        repository: repo.describe(),
        identity: st.identity.clone(),
        backups: st.catalog.complete.len(),
        newest_physical: newest(BackupKind::Physical),
        newest_logical: newest(BackupKind::Logical),
        recoverable_windows: st.windows.clone(),
        wal_gaps: st.gaps.iter().map(Gap::to_string).collect(),
        wal: st.wal_summary(),
        incomplete_backups: st
            .catalog
            .incomplete
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
        daemon: daemon_view(&ctx.cfg),
    };
    if ctx.json {
        return ctx.print_json(&s);
    }
    println!("repository:        {}", s.repository);
    match &s.identity {
        Some(i) => println!(
            "cluster:           system identifier {}, PostgreSQL {}, WAL segments of {}",
            i.system_identifier,
            i.pg_major,
            human_bytes(i.wal_segment_size)
        ),
        None => println!("cluster:           not initialised (no repo.json)"),
    }
    println!("backups:           {}", s.backups);
    for (what, b) in [
        ("newest physical:", &s.newest_physical),
        ("newest logical:", &s.newest_logical),
    ] {
        if let Some(b) = b {
            println!(
                "{what:<18} {} ({}, verified: {})",
                b.id,
                human_bytes(b.stored_bytes),
                b.verified.as_deref().unwrap_or("no")
            );
        }
    }
    println!(
        "WAL:               {} segments on timelines {:?}, {}; newest {} archived {}",
        s.wal.segments,
        s.wal.timelines,
        human_bytes(s.wal.stored_bytes),
        s.wal.newest_segment.as_deref().unwrap_or("-"),
        s.wal.newest_archived_at.as_deref().unwrap_or("-")
    );
    print_windows(&s.recoverable_windows, &s.wal_gaps);
    print_daemon(&s.daemon);
    Ok(())
}

fn print_daemon(d: &DaemonView) {
    if let Some(e) = &d.history_error {
        println!("daemon history:    unreadable: {e}");
    }
    if d.jobs.is_empty() {
        println!(
            "daemon:            no job scheduled, no history in {}",
            d.state_file
        );
        return;
    }
    println!("daemon jobs ({}):", d.timezone);
    let t = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
    for j in &d.jobs {
        let h = &j.history;
        let last = match (&h.running, h.last_outcome) {
            (Some(r), _) => format!("running since {} (run {})", r.since.to_rfc3339(), r.run_id),
            (None, Some(o)) => format!(
                "last {} at {}{}",
                o.as_str(),
                t(h.last_end),
                h.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            (None, None) => "never ran".into(),
        };
        println!(
            "  {:<11} {:<18} next {:<26} {last}",
            j.job.as_str(),
            j.schedule.as_deref().unwrap_or("(not scheduled)"),
            t(j.next_run)
        );
    }
}

fn print_backup(m: &Manifest) {
    println!("id:            {}", m.id);
    println!("kind:          {}", m.kind);
    println!("label:         {}", m.label.as_deref().unwrap_or("-"));
    println!(
        "host:          {} (cluster {}, system identifier {})",
        m.host, m.cluster, m.system_identifier
    );
    println!("PostgreSQL:    {}", m.pg_version);
    println!("started:       {}", m.start_time.to_rfc3339());
    println!("stopped:       {}", m.stop_time.to_rfc3339());
    println!(
        "size:          {} stored, {} original ({:?} level {})",
        human_bytes(m.stored_bytes()),
        human_bytes(m.original_bytes()),
        m.compression.algorithm,
        m.compression.level
    );
    if let Some(p) = &m.physical {
        println!("timeline:      {}", p.timeline);
        println!(
            "WAL:           {} ({}) → {} ({})",
            p.start_lsn, p.start_wal, p.stop_lsn, p.stop_wal
        );
        println!("files:         {} from {}", p.files, p.pgdata);
        for t in &p.tablespaces {
            println!("tablespace:    {} ({}) at {}", t.name, t.oid, t.location);
        }
    }
    if let Some(l) = &m.logical {
        for d in &l.databases {
            println!(
                "database:      {} ({}, {} tables, {} rows)",
                d.name,
                human_bytes(d.size_bytes.max(0) as u64),
                d.tables.len(),
                d.total_rows()
            );
        }
    }
    if let Some(rp) = &m.restore_point {
        println!(
            "restore point: {} at {} ({})",
            rp.name,
            rp.lsn,
            rp.time.to_rfc3339()
        );
    }
    match &m.verification {
        Some(v) => println!(
            "verified:      {:?} at {} in {:.1}s{}",
            v.outcome,
            v.time.to_rfc3339(),
            v.duration_secs,
            if v.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", v.failures.join("; "))
            }
        ),
        None => println!("verified:      no"),
    }
    println!("objects:");
    for o in &m.objects {
        println!(
            "  {:<32} {:>10} stored {:>10} original  sha256 {}",
            o.name,
            human_bytes(o.stored_size),
            human_bytes(o.size),
            o.sha256
        );
    }
}
