//! `backupctl info [ID]`: one backup in detail (`--json`: its manifest), or the
//! repository summary.

use serde::Serialize;

use crate::cli::InfoArgs;
use crate::commands::list::{print_windows, BackupLine};
use crate::commands::status::{human_bytes, RepoStatus, WalSummary};
use crate::commands::Ctx;
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
    Ok(())
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
