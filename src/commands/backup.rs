//! `backupctl backup`: take a backup now (the daemon's scheduled jobs and the
//! pre-migration hook call the same code). Holds the job lock of its kind so an on-demand
//! and a scheduled backup never overlap.

use std::time::Duration;

use serde::Serialize;

use crate::cli::{BackupArgs, KindArg};
use crate::commands::{backup_physical, not_implemented, Ctx};
use crate::lock::{self, Wait};
use crate::manifest::Manifest;

#[derive(Serialize)]
struct Summary<'a> {
    id: &'a str,
    kind: String,
    label: Option<&'a str>,
    start_time: String,
    stop_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_lsn: Option<String>,
    stored_bytes: u64,
    original_bytes: u64,
    objects: usize,
}

pub async fn run(ctx: &Ctx, args: BackupArgs) -> anyhow::Result<()> {
    if args.verify {
        return Err(not_implemented("backup --verify"));
    }
    match args.kind {
        KindArg::Physical => {}
        KindArg::Logical | KindArg::Both => return Err(not_implemented("backup --kind logical")),
    }
    let wait = if args.no_wait {
        Wait::No
    } else {
        Wait::Up(Duration::from_secs(24 * 3600))
    };
    let _lock = lock::acquire_async(&ctx.cfg.backup.state_dir, "backup-physical", wait).await?;
    let m = backup_physical::run(ctx, args.label.as_deref()).await?;
    print(ctx, &m)
}

fn print(ctx: &Ctx, m: &Manifest) -> anyhow::Result<()> {
    if ctx.json {
        let p = m.physical.as_ref();
        ctx.print_json(&Summary {
            id: &m.id,
            kind: m.kind.to_string(),
            label: m.label.as_deref(),
            start_time: m.start_time.to_rfc3339(),
            stop_time: m.stop_time.to_rfc3339(),
            start_lsn: p.map(|p| p.start_lsn.to_string()),
            stop_lsn: p.map(|p| p.stop_lsn.to_string()),
            stored_bytes: m.stored_bytes(),
            original_bytes: m.original_bytes(),
            objects: m.objects.len(),
        })
    } else {
        println!("{}", m.id);
        Ok(())
    }
}
