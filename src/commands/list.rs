//! `backupctl list`: every backup, the recoverable window(s) and WAL gaps.

use serde::Serialize;

use crate::commands::status::{human_bytes, RepoStatus};
use crate::commands::Ctx;
use crate::manifest::Manifest;
use crate::recovery::inventory::Gap;
use crate::recovery::plan::Window;
use crate::recovery::target::format_pg_time;
use crate::repo;

#[derive(Serialize)]
pub struct BackupLine {
    pub id: String,
    pub kind: String,
    pub label: Option<String>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub stored_bytes: u64,
    pub original_bytes: u64,
    /// `ok`, `failed`, or absent when never verified.
    pub verified: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseLine>,
}

#[derive(Serialize)]
pub struct DatabaseLine {
    pub name: String,
    pub size_bytes: i64,
    pub tables: usize,
    pub rows: i64,
}

impl BackupLine {
    pub fn of(m: &Manifest) -> BackupLine {
        BackupLine {
            id: m.id.clone(),
            kind: m.kind.to_string(),
            label: m.label.clone(),
            start_time: m.start_time.to_rfc3339(),
            stop_time: m.stop_time.to_rfc3339(),
            start_lsn: m.physical.as_ref().map(|p| p.start_lsn.to_string()),
            stop_lsn: m.physical.as_ref().map(|p| p.stop_lsn.to_string()),
            stored_bytes: m.stored_bytes(),
            original_bytes: m.original_bytes(),
            verified: m.verification.as_ref().map(|v| {
                serde_json::to_value(v.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
            databases: m
                .logical
                .iter()
                .flat_map(|l| &l.databases)
                .map(|d| DatabaseLine {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    tables: d.tables.len(),
                    rows: d.total_rows(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct Listing {
    repository: String,
    backups: Vec<BackupLine>,
    recoverable_windows: Vec<Window>,
    wal_gaps: Vec<String>,
    incomplete_backups: Vec<String>,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let repo = repo::open(&ctx.cfg).await?;
    let st = RepoStatus::load(repo.as_ref()).await?;
    let listing = Listing {
        repository: repo.describe(),
        backups: st.catalog.complete.iter().map(BackupLine::of).collect(),
        recoverable_windows: st.windows.clone(),
        wal_gaps: st.gaps.iter().map(Gap::to_string).collect(),
        incomplete_backups: st
            .catalog
            .incomplete
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
    };
    if ctx.json {
        return ctx.print_json(&listing);
    }
    println!("repository: {}", listing.repository);
    if listing.backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<28} {:<8} {:<14} {:<20} {:<20} {:<24} {:>10} {:>10} {:<8}",
            "ID",
            "KIND",
            "LABEL",
            "STARTED (UTC)",
            "STOPPED (UTC)",
            "LSN",
            "STORED",
            "ORIGINAL",
            "VERIFIED"
        );
        for (b, m) in listing.backups.iter().zip(&st.catalog.complete) {
            let lsn = match (&b.start_lsn, &b.stop_lsn) {
                (Some(a), Some(z)) => format!("{a}-{z}"),
                _ => "-".into(),
            };
            println!(
                "{:<28} {:<8} {:<14} {:<20} {:<20} {:<24} {:>10} {:>10} {:<8}",
                b.id,
                b.kind,
                b.label.as_deref().unwrap_or("-"),
                m.start_time.format("%Y-%m-%d %H:%M:%S"),
                m.stop_time.format("%Y-%m-%d %H:%M:%S"),
                lsn,
                human_bytes(b.stored_bytes),
                human_bytes(b.original_bytes),
                b.verified.as_deref().unwrap_or("no")
            );
            for d in &b.databases {
                println!(
                    "    database {:<20} {:>10}  {} tables, {} rows",
                    d.name,
                    human_bytes(d.size_bytes.max(0) as u64),
                    d.tables,
                    d.rows
                );
            }
        }
    }
    print_windows(&listing.recoverable_windows, &listing.wal_gaps);
    if !listing.incomplete_backups.is_empty() {
        println!(
            "incomplete backups (no manifest; in progress or failed): {}",
            listing.incomplete_backups.join(", ")
        );
    }
    Ok(())
}

pub fn print_windows(windows: &[Window], gaps: &[String]) {
    if windows.is_empty() {
        println!("recoverable window: none (no physical backup with its WAL)");
    }
    for w in windows {
        println!(
            "recoverable window: {} → {} (timeline {})",
            format_pg_time(&w.from),
            w.to.map(|t| format_pg_time(&t))
                .unwrap_or_else(|| "?".into()),
            w.timeline
        );
    }
    for g in gaps {
        println!("WAL gap: {g}");
    }
}
