//! Logical backup: `pg_dump -Fc -Z0` of each database, streamed through our compressor
//! into the repository, plus `pg_dumpall --globals-only`, with exact row counts taken in
//! the dump's own snapshot.
//!
//! Per database, one held connection runs `BEGIN ISOLATION LEVEL REPEATABLE READ, READ
//! ONLY` and exports its snapshot; `pg_dump --snapshot` dumps exactly that snapshot. The
//! uncompressed archive is teed into `pg_restore -l`, whose listing (the custom format
//! writes its TOC first) names every table the dump holds rows for; the held connection
//! counts exactly those tables, in the same snapshot, while pg_dump streams the data. So
//! the manifest's counts are what the dump contains, however busy the server is.
//!
//! Failure safety: any failure (pg_dump's exit status and stderr, a count, an upload)
//! fails the whole backup, deletes the objects already written, and writes no manifest:
//! nothing that looks like a complete backup is left.

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tokio_postgres::Client;
use tracing::Instrument;

use crate::codec::Codec;
use crate::config::{Config, DataKind};
use crate::host::local_hostname;
use crate::manifest::{
    backup_id, BackupKind, DatabaseDump, LogicalInfo, Manifest, ObjectEntry, TableRows, FORMAT,
};
use crate::pg::bin::PgBin;
use crate::pg::conn::{ConnParams, ServerInfo};
use crate::pg::proc::Proc;
use crate::pg::sql::ident as quote_ident;
use crate::pg::toc;
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, layout, PutOptions, Repository};
use crate::transfer::{self, Stored};

const PIPE_CHUNK: usize = 256 << 10;

/// Take a logical backup of `databases` (empty: `logical.databases`, else every
/// connectable non-template database) and return its stored manifest.
pub async fn run(
    cfg: &Config,
    label: Option<&str>,
    databases: &[String],
) -> anyhow::Result<Manifest> {
    let params = ConnParams::from_config(&cfg.postgres)?;
    let client = params.connect().await?;
    let info = ServerInfo::query(&client).await?;
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
    .await
    .with_context(|| format!("check the identity of repository {}", repo.describe()))?;
    let bin = PgBin::clients(&cfg.postgres, Some(info.major()))?;
    let pg_dump_version = version_of(&bin, "pg_dump");

    let requested = if databases.is_empty() {
        &cfg.logical.databases[..]
    } else {
        databases
    };
    let dbs = choose_databases(&client, requested).await?;
    let (id, start) = fresh_id(repo.as_ref()).await?;
    let codec = Codec::from_config(&cfg.compression.for_kind(DataKind::Logical));
    tracing::info!(databases = ?dbs, "logical backup {id} started");

    let mut written: Vec<String> = Vec::new();
    let span = tracing::info_span!("backup", id = %id);
    let result = async {
        crate::failpoint::point("backup.started");
        let mut objects = Vec::new();
        let mut dumps = Vec::new();
        for db in &dbs {
            let (dump, objs) = dump_database(&bin, &params, &repo, &id, codec, db, &mut written)
                .await
                .with_context(|| format!("dump database {db}"))?;
            tracing::info!(
                database = %db,
                tables = dump.tables.len(),
                rows = dump.total_rows(),
                "dumped database {db}"
            );
            dumps.push(dump);
            objects.extend(objs);
        }
        let globals = dump_globals(cfg, &bin, &params, &repo, &id, codec, &mut written)
            .await
            .context("dump roles and tablespaces (pg_dumpall --globals-only)")?;
        let globals_object = globals.name.clone();
        objects.push(globals);
        let manifest = Manifest {
            format: FORMAT,
            id: id.clone(),
            kind: BackupKind::Logical,
            label: label.map(str::to_string),
            host: local_hostname(),
            cluster: cfg.repository.cluster.clone(),
            pg_version: info.version.clone(),
            pg_version_num: info.version_num,
            system_identifier: info.system_identifier.to_string(),
            start_time: start,
            stop_time: Utc::now(),
            compression: codec,
            objects,
            physical: None,
            logical: Some(LogicalInfo {
                databases: dumps,
                globals_object,
                globals_include_passwords: cfg.logical.include_passwords,
                pg_dump_version,
            }),
            restore_point: None,
            verification: None,
        };
        crate::failpoint::point("backup.before-manifest");
        manifest.store(repo.as_ref()).await?;
        crate::failpoint::point("backup.after-manifest");
        anyhow::Ok(manifest)
    }
    .instrument(span)
    .await;
    match result {
        Ok(m) => {
            tracing::info!(
                stored_bytes = m.stored_bytes(),
                "logical backup {id} complete"
            );
            Ok(m)
        }
        Err(e) => {
            remove_partial(repo.as_ref(), &id, &written).await;
            Err(e.context(format!(
                "logical backup {id} failed; no manifest was written"
            )))
        }
    }
}

/// The databases to dump: the requested ones (each must exist and accept connections),
/// or every connectable non-template database.
async fn choose_databases(client: &Client, requested: &[String]) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT datname, datallowconn AND NOT datistemplate FROM pg_database ORDER BY datname",
            &[],
        )
        .await
        .context("list databases")?;
    let all: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let dumpable: Vec<String> = all.iter().filter(|d| d.1).map(|d| d.0.clone()).collect();
    if requested.is_empty() {
        anyhow::ensure!(!dumpable.is_empty(), "the server has no database to dump");
        return Ok(dumpable);
    }
    let mut out = Vec::new();
    for name in requested {
        match all.iter().find(|d| &d.0 == name) {
            None => {
                return Err(crate::user_error!(
                    "database {name:?} does not exist on the server (databases: {}); fix --database or logical.databases",
                    dumpable.join(", ")
                ))
            }
            Some((_, false)) => {
                return Err(crate::user_error!(
                    "database {name:?} is a template or does not allow connections; it cannot be dumped"
                ))
            }
            Some(_) if out.contains(name) => {}
            Some(_) => out.push(name.clone()),
        }
    }
    Ok(out)
}

/// A backup id no other backup uses (two backups within one second wait for the next).
async fn fresh_id(repo: &dyn Repository) -> anyhow::Result<(String, chrono::DateTime<Utc>)> {
    loop {
        let start = Utc::now();
        let id = backup_id(start, BackupKind::Logical);
        let existing = repo
            .list(&layout::backup_prefix(&id))
            .await
            .with_context(|| format!("list {}", repo.describe()))?;
        if existing.is_empty() {
            return Ok((id, start));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn entry(name: String, s: &Stored) -> ObjectEntry {
    ObjectEntry {
        name,
        sha256: s.stored.sha256.clone(),
        stored_size: s.stored.size,
        size: s.size,
    }
}

/// The first line of `program --version`, e.g. `pg_dump (PostgreSQL) 15.18`.
pub(crate) fn version_of(bin: &PgBin, program: &str) -> Option<String> {
    let out = bin.std_command(program).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines().next().map(|l| l.trim().to_string())
}

async fn remove_partial(repo: &dyn Repository, id: &str, written: &[String]) {
    if written.is_empty() {
        return;
    }
    match repo.delete_many(written).await {
        Ok(()) => tracing::info!(
            "removed the {} object(s) backup {id} had written",
            written.len()
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not remove the objects of failed backup {id}; without a manifest they are \
             never used, and retention removes them after retention.incomplete_after"
        ),
    }
}

/// What the counting side learns from the TOC reader.
type TocResult = Result<String, String>;

#[allow(clippy::too_many_arguments)]
async fn dump_database(
    bin: &PgBin,
    params: &ConnParams,
    repo: &Arc<dyn Repository>,
    id: &str,
    codec: Codec,
    db: &str,
    written: &mut Vec<String>,
) -> anyhow::Result<(DatabaseDump, Vec<ObjectEntry>)> {
    let db_params = params.with_dbname(db);
    let conn = db_params.connect().await?;
    // The exporting transaction stays open (idle) while pg_dump runs: no timeouts may
    // end it, and row security must not silently hide rows from the counts.
    conn.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET LOCAL statement_timeout = 0;
         SET LOCAL idle_in_transaction_session_timeout = 0;
         SET LOCAL row_security = off;",
    )
    .await
    .context("start the snapshot transaction")?;
    let snapshot: String = conn
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("export the snapshot")?
        .get(0);
    let row = conn
        .query_one(
            "SELECT pg_database_size(d.oid), pg_encoding_to_char(d.encoding), d.datcollate::text,
                    d.datctype::text, (SELECT count(*) FROM pg_largeobject_metadata)
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .context("read the database's size and encoding")?;

    let name = layout::logical_dump_name(db, codec.algorithm);
    let key = layout::backup_object_key(id, &name);
    let (toc_tx, toc_rx) = tokio::sync::oneshot::channel::<TocResult>();
    let abort = Arc::new(AtomicBool::new(false));
    // Kept until the dump is over: it holds the password file pg_dump reads.
    let child_env = db_params.child_env()?;
    let dump_fut = {
        let mut cmd = bin.std_command("pg_dump");
        cmd.args(["--format=custom", "--compress=0", "--snapshot"])
            .arg(&snapshot);
        child_env.apply(&mut cmd);
        let mut list_cmd = bin.std_command("pg_restore");
        list_cmd.arg("--list");
        let abort = abort.clone();
        transfer::put_stream(repo, &key, codec, PutOptions::default(), move |w| {
            run_pg_dump(cmd, list_cmd, w, toc_tx, &abort)
        })
    };
    let count_fut = async {
        let listing = match toc_rx.await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(_) => anyhow::bail!("pg_dump stopped before writing its table of contents"),
        };
        let tables = count_rows(&conn, &toc::table_data_oids(&listing)).await?;
        anyhow::Ok((listing, tables))
    };
    let count_fut = async {
        let r = count_fut.await;
        if r.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        r
    };
    let (dumped, counted) = tokio::join!(dump_fut, count_fut);
    // pg_dump's own error explains a failure best; the counting side's comes second.
    let stored = match (dumped, &counted) {
        (Ok((s, ())), _) => s,
        (Err(e), Err(c)) if is_aborted(&e) => return Err(anyhow::anyhow!("{c:#}")),
        (Err(e), _) => return Err(e),
    };
    written.push(stored.key.clone());
    let (listing, tables) = counted?;
    // The snapshot was needed until pg_dump finished; the transaction only read.
    if let Err(e) = conn.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %e, "end the snapshot transaction");
    }

    let toc_name = layout::logical_toc_name(db, codec.algorithm);
    let toc_key = layout::backup_object_key(id, &toc_name);
    let bytes = listing.clone().into_bytes();
    let (toc_stored, ()) =
        transfer::put_stream(repo, &toc_key, codec, PutOptions::default(), move |w| {
            w.write_all(&bytes)?;
            Ok(())
        })
        .await
        .context("store the dump's table of contents")?;
    written.push(toc_key);

    let dump = DatabaseDump {
        name: db.to_string(),
        object: name.clone(),
        size_bytes: row.get(0),
        tables,
        toc_counts: toc::counts(&listing),
        toc_object: Some(toc_name.clone()),
        large_objects: row.get::<_, i64>(4) as u64,
        encoding: Some(row.get(1)),
        collate: Some(row.get(2)),
        ctype: Some(row.get(3)),
    };
    Ok((
        dump,
        vec![entry(name, &stored), entry(toc_name, &toc_stored)],
    ))
}

fn is_aborted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == ABORTED)
}

const ABORTED: &str = "dump abandoned because counting rows failed";

/// The producer: pg_dump's stdout into `w` (and into `pg_restore --list` until it has
/// read the TOC). Blocking; runs on the upload's producer thread.
fn run_pg_dump(
    mut cmd: std::process::Command,
    mut list_cmd: std::process::Command,
    w: &mut dyn Write,
    toc_tx: tokio::sync::oneshot::Sender<TocResult>,
    abort: &AtomicBool,
) -> anyhow::Result<()> {
    let mut dump = Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()), "pg_dump")?;
    let mut lister = Proc::spawn(
        list_cmd.stdin(Stdio::piped()).stdout(Stdio::piped()),
        "pg_restore --list",
    )?;
    let mut tee = Some(lister.take_stdin());
    let mut list_out = lister.take_stdout();
    // Read the listing on its own thread so pg_restore never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let r = list_out.read_to_string(&mut s);
        (s, r)
    });
    let mut toc_tx = Some(toc_tx);
    let mut lister = Some((lister, reader));
    let mut out = dump.take_stdout();
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        if abort.load(Ordering::SeqCst) {
            anyhow::bail!(ABORTED);
        }
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read pg_dump's output"),
        };
        w.write_all(&buf[..n])?;
        if let Some(t) = tee.as_mut() {
            // pg_restore --list exits once it has read the TOC: a broken pipe is its
            // normal end, not an error.
            if t.write_all(&buf[..n]).is_err() {
                tee = None;
            }
        }
        if tee.is_none() {
            finish_listing(&mut lister, &mut toc_tx);
        }
    }
    drop(tee);
    // On failure the TOC side learns nothing more; pg_dump's message is the error.
    let stderr = dump.finish()?;
    if !stderr.trim().is_empty() {
        tracing::warn!("pg_dump: {}", stderr.trim());
    }
    finish_listing(&mut lister, &mut toc_tx);
    Ok(())
}

type Lister = (
    Proc,
    std::thread::JoinHandle<(String, std::io::Result<usize>)>,
);

/// Once pg_restore --list has its input closed (or closed it), collect its listing and
/// hand it to the counting side.
fn finish_listing(
    lister: &mut Option<Lister>,
    toc_tx: &mut Option<tokio::sync::oneshot::Sender<TocResult>>,
) {
    let Some((child, reader)) = lister.take() else {
        return;
    };
    let (listing, read) = reader.join().unwrap_or_else(|_| (String::new(), Ok(0)));
    let result = match (child.wait(), read) {
        (Err(e), _) | (_, Err(e)) => Err(format!("run pg_restore --list: {e}")),
        (Ok(x), Ok(_)) if x.success() && listing.contains("; ") => Ok(listing),
        (Ok(x), Ok(_)) => Err(format!(
            "{} (the dump's table of contents could not be read)",
            x.failure()
        )),
    };
    if let Some(tx) = toc_tx.take() {
        let _ = tx.send(result);
    }
}

/// Exact row counts, in the held snapshot, of the tables whose rows the dump holds.
async fn count_rows(conn: &Client, oids: &[u32]) -> anyhow::Result<Vec<TableRows>> {
    // Extension configuration tables are dumped with their extension's filter
    // condition (pg_extension_config_dump), so they are counted with it too.
    let rows = conn
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text,
                    CASE WHEN c.relispartition THEN
                        (SELECT rn.nspname || '.' || rc.relname FROM pg_class rc
                         JOIN pg_namespace rn ON rn.oid = rc.relnamespace
                         WHERE rc.oid = pg_partition_root(c.oid)) END,
                    (SELECT e.extcondition[array_position(e.extconfig, c.oid)]
                     FROM pg_extension e WHERE c.oid = ANY(e.extconfig) LIMIT 1)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = ANY($1::oid[])
             ORDER BY n.nspname, c.relname",
            &[&oids],
        )
        .await
        .context("look up the dumped tables")?;
    anyhow::ensure!(
        rows.len() == oids.len(),
        "the dump lists {} tables with rows but the snapshot shows {}",
        oids.len(),
        rows.len()
    );
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        let (oid, schema, table): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let condition: Option<String> = r.get(4);
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{} {}",
            quote_ident(&schema),
            quote_ident(&table),
            condition.unwrap_or_default()
        );
        let n: i64 = conn
            .query_one(&sql, &[])
            .await
            .with_context(|| format!("count the rows of {schema}.{table}"))?
            .get(0);
        tables.push(TableRows {
            schema,
            table,
            rows: n,
            oid,
            partition_of: r.get(3),
        });
    }
    Ok(tables)
}

/// `pg_dumpall --globals-only`: roles (passwords only when `logical.include_passwords`)
/// and tablespaces.
async fn dump_globals(
    cfg: &crate::config::Config,
    bin: &PgBin,
    params: &ConnParams,
    repo: &Arc<dyn Repository>,
    id: &str,
    codec: Codec,
    written: &mut Vec<String>,
) -> anyhow::Result<ObjectEntry> {
    let name = layout::logical_globals_name(codec.algorithm);
    let key = layout::backup_object_key(id, &name);
    let child_env = params.child_env()?;
    let mut cmd = bin.std_command("pg_dumpall");
    cmd.arg("--globals-only").arg("-l").arg(&params.dbname);
    child_env.apply(&mut cmd);
    if !cfg.logical.include_passwords {
        cmd.arg("--no-role-passwords");
    }
    let (stored, ()) = transfer::put_stream(repo, &key, codec, PutOptions::default(), move |w| {
        let mut child = Proc::spawn(
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()),
            "pg_dumpall",
        )?;
        std::io::copy(&mut child.take_stdout(), w).context("read pg_dumpall's output")?;
        child.finish()?;
        Ok(())
    })
    .await?;
    written.push(key);
    Ok(entry(name, &stored))
}
