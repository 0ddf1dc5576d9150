//! Test-restore of a logical backup: a scratch cluster (initdb in the scratch directory,
//! same major version, private socket), the roles and every database restored into it
//! (every object's checksum checked on download), then every table's row count compared
//! with the manifest and the restored schema's table of contents compared, kind by kind,
//! with what the dump's TOC lists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::backup::Findings;
use super::scratch::ScratchDir;
use crate::config::Config;
use crate::manifest::{DatabaseDump, Manifest};
use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::server::{initdb, Server};
use crate::pg::sql::ident;
use crate::repo::Repository;

/// Mismatches listed per database before "… and N more".
const MAX_LISTED: usize = 20;

pub async fn verify(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    scratch: &ScratchDir,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let l = m
        .logical
        .as_ref()
        .context("logical backup without logical info")?;
    let started = Instant::now();
    let bin = PgBin::for_config(&cfg.postgres, Some(m.pg_version_num / 10000))?;
    if let Some(problem) = crate::pg::bin::restore_incompatibility(bin.client_major, bin.major) {
        anyhow::bail!("{problem}");
    }
    let cluster = scratch.path.join("cluster");
    let sock = scratch.path.join("sock");
    std::fs::create_dir_all(&sock)?;
    let mut params = ConnParams::from_config(&cfg.postgres)?.with_dbname("postgres");
    params.host = sock.display().to_string();
    params.port = 20000 + (std::process::id() % 20000) as u16;
    initdb(&bin, &cluster, &params.user).await?;
    let settings = [
        ("port", params.port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", sock.display().to_string()),
        ("fsync", "off".into()),
        ("logging_collector", "off".into()),
        ("shared_buffers", "128MB".into()),
    ];
    let mut auto = String::new();
    for (k, v) in settings {
        auto.push_str(&format!("{k} = {}\n", crate::ops::restore::quote(&v)));
    }
    std::fs::write(cluster.join("postgresql.auto.conf"), auto)?;
    let log = scratch.path.join("cluster.log");
    let server = Server::start(&bin, &cluster, &log, "", params.clone()).await?;
    server.wait_ready(Duration::from_secs(120)).await?;

    let mut scratch_cfg = cfg.clone();
    scratch_cfg.backup.state_dir = scratch.path.join("state");
    let restored = tokio::time::timeout(
        cfg.verify.timeout,
        crate::ops::restore::logical::restore_all_into(&scratch_cfg, repo, m, &bin, &params),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the restore did not finish within verify.timeout ({:?})",
            cfg.verify.timeout
        )
    })?;
    if let Err(e) = restored {
        let _ = server.stop().await;
        return Err(e);
    }
    f.rto_secs = started.elapsed().as_secs_f64();
    f.checked.push(format!(
        "every object's checksum ({} objects, {}); roles and {} databases restored into a scratch PostgreSQL {}",
        m.objects.len(),
        crate::ops::status::human_bytes(m.stored_bytes()),
        l.databases.len(),
        bin.major
    ));

    let result = async {
        for d in &l.databases {
            compare_rows(&params, d, f).await?;
            compare_toc(&bin, &params, d, &scratch.path, f).await?;
        }
        anyhow::Ok(())
    }
    .await;
    server.stop().await?;
    result
}

/// Every table's exact row count against the manifest.
async fn compare_rows(
    params: &ConnParams,
    d: &DatabaseDump,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let client = params.with_dbname(&d.name).connect().await?;
    let mut mismatches = vec![];
    for t in &d.tables {
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            ident(&t.schema),
            ident(&t.table)
        );
        match client.query_one(&sql, &[]).await {
            Ok(row) => {
                let n: i64 = row.get(0);
                if n != t.rows {
                    mismatches.push(format!(
                        "table {}.{} has {n} rows restored, the manifest says {}",
                        t.schema, t.table, t.rows
                    ));
                }
            }
            Err(e) => mismatches.push(format!(
                "table {}.{} cannot be read after the restore: {e}",
                t.schema, t.table
            )),
        }
    }
    if mismatches.is_empty() {
        f.checked.push(format!(
            "database {}: all {} tables' row counts match the manifest ({} rows)",
            d.name,
            d.tables.len(),
            d.total_rows()
        ));
    } else {
        push_listed(f, &format!("database {}", d.name), mismatches);
    }
    Ok(())
}

/// The restored schema, dumped again, must list as many tables, indexes, constraints,
/// sequences, functions… as the backup's own TOC.
async fn compare_toc(
    bin: &PgBin,
    params: &ConnParams,
    d: &DatabaseDump,
    work: &std::path::Path,
    f: &mut Findings,
) -> anyhow::Result<()> {
    match crate::ops::restore::logical::schema_mismatches(
        bin,
        &params.with_dbname(&d.name),
        d,
        work,
    )
    .await?
    {
        None => f.checked.push(format!(
            "database {}: no TOC counts recorded in this backup; schema not compared",
            d.name
        )),
        Some((checked, mismatches)) if mismatches.is_empty() => f.checked.push(format!(
            "database {}: schema objects match the dump's TOC ({checked})",
            d.name
        )),
        Some((_, mismatches)) => push_listed(f, &format!("database {}", d.name), mismatches),
    }
    Ok(())
}

fn push_listed(f: &mut Findings, what: &str, mut items: Vec<String>) {
    let more = items.len().saturating_sub(MAX_LISTED);
    items.truncate(MAX_LISTED);
    for i in items {
        f.failures.push(format!("{what}: {i}"));
    }
    if more > 0 {
        f.failures.push(format!("{what}: … and {more} more"));
    }
}
