//! Cold storage: `[[archive]] export_after` exports archived data to the repository and
//! drops it from the database; `backupctl restore-export` brings one export back.
//!
//! Per `archive` run, after the policy's own move, every month of the archive table
//! (rows mode) and every partition this policy archived (partitions mode, found in
//! `archive_log.moved_partitions`) that lies wholly before the export cutoff —
//! `now() - export_after` rounded down to the first of the month — is exported:
//!
//! 1. rows mode: the month's rows are copied into a staging table
//!    `<archive table>_YYYY_MM` (committed, marked as backupctl's by a comment; one left
//!    by a killed run is dropped and rebuilt). Partitions mode exports the partition
//!    itself;
//! 2. the rows are counted and fingerprinted ([`crate::archival::export`]);
//! 3. `pg_dump -Fc` of that one table streams into `exports/<id>/data.dump<suffix>`;
//! 4. the stored object is read back (checksum), rendered by `pg_restore`, its rows
//!    loaded into a temporary table and fingerprinted: they must be the same rows;
//! 5. the manifest is written — the export now exists;
//! 6. in one transaction the rows are deleted (rows mode: the month from the archive
//!    table, and the staging table dropped; partitions mode: the partition dropped,
//!    after locking it and fingerprinting it again), checked against the export, and
//!    committed — or rolled back with nothing lost when anything differs.
//!
//! A run killed anywhere leaves the data in the database: before step 5 the objects
//! have no manifest (retention removes them after `incomplete_after`), after it the next
//! run finds the export already made (same relation, month, rows and fingerprint) and
//! only does step 6.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;

use crate::archival::export::{
    self as ex, fingerprint_sql, month_condition, months_sql, ExportColumn, ExportItem,
    ExportManifest, ExportStatus, PolicyExports,
};
use crate::archival::inspect::{self, Source};
use crate::archival::log;
use crate::codec::{algorithm_of, Codec};
use crate::config::{Align, ArchiveMode, ArchivePolicy, Config, DataKind};
use crate::partitions::catalog;
use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::proc::{self, Proc};
use crate::pg::retry::{set_local_lock_timeout, transaction, with_lock_retries, On};
use crate::pg::sql;
use crate::repo::{layout, PutOptions, Repository};
use crate::transfer;

/// Marks a staging table as backupctl's (a table of that name without it is refused).
const STAGING_COMMENT: &str = "backupctl export staging table";

/// What a policy's export step works with.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub client: &'a Client,
    pub db: &'a str,
    pub p: &'a ArchivePolicy,
    pub index: usize,
    pub s: &'a Source,
    /// Rows mode: where the rows were archived, (schema, name).
    pub archive: (String, String),
    pub dry_run: bool,
}

/// The export step of one policy (with `export_after`). Refusals (a bad interval) are
/// errors; per-item failures are in the items, the others still go.
pub async fn run_policy(x: &Ctx<'_>, out: &mut PolicyExports) -> anyhow::Result<()> {
    let Some(export_after) = &x.p.export_after else {
        return Ok(());
    };
    let key_name = format!("archive[{}].export_after", x.index);
    check(x.client, x.p, x.index).await?;
    let monthly = ArchivePolicy {
        older_than: export_after.clone(),
        align: Some(Align::Month),
        ..x.p.clone()
    };
    let (cutoff, _) = inspect::cutoff(x.client, &monthly, x.s.key, &key_name).await?;
    out.cutoff = Some(cutoff.clone());
    let tz: String = x
        .client
        .query_one(
            "SELECT coalesce($1::text, current_setting('TimeZone'))",
            &[&x.p.timezone],
        )
        .await?
        .get(0);
    let candidates = match x.p.mode {
        ArchiveMode::Rows => months(x, &cutoff, &tz).await?,
        ArchiveMode::Partitions => partitions(x, &cutoff).await?,
    };
    if candidates.is_empty() {
        return Ok(());
    }
    let known = if x.dry_run {
        Vec::new()
    } else {
        let repo = crate::repo::open(x.cfg).await?;
        ex::list(repo.as_ref()).await?.0
    };
    for c in candidates {
        let mut item = ExportItem {
            relation: c.relation_display(),
            month: c.month.clone(),
            rows: c.rows,
            status: ExportStatus::WouldExport,
            id: None,
            stored_bytes: None,
            detail: None,
        };
        if !x.dry_run {
            match export_one(x, &c, &known).await {
                Ok((m, reused)) => {
                    item.status = if reused {
                        ExportStatus::AlreadyExported
                    } else {
                        ExportStatus::Exported
                    };
                    item.rows = m.rows;
                    item.stored_bytes = Some(m.stored.size);
                    tracing::info!(export = %m.id, relation = %item.relation, month = ?item.month, rows = m.rows, "exported to the repository, verified, and dropped from the database");
                    item.id = Some(m.id);
                }
                Err(e) => {
                    tracing::error!(relation = %item.relation, month = ?item.month, "export failed: {e:#}");
                    item.status = ExportStatus::Failed;
                    item.detail = Some(format!("{e:#}"));
                }
            }
        }
        out.items.push(item);
    }
    Ok(())
}

/// Refuse an `export_after` that is not an interval or is shorter than `older_than`
/// (before anything of the policy runs).
pub async fn check(client: &Client, p: &ArchivePolicy, index: usize) -> anyhow::Result<()> {
    let Some(export_after) = &p.export_after else {
        return Ok(());
    };
    let key_name = format!("archive[{index}].export_after");
    let row = client
        .query_one(
            "SELECT $1::text::interval > interval '0', $1::text::interval >= $2::text::interval",
            &[export_after, &p.older_than],
        )
        .await
        .map_err(|e| {
            crate::user_error!(
                "key `{key_name}`: {export_after:?} is not a PostgreSQL interval ({}); write e.g. \"24 months\"",
                catalog::pg_message(&e)
            )
        })?;
    if !row.get::<_, bool>(0) {
        return Err(crate::user_error!(
            "key `{key_name}`: {export_after:?} is not a positive interval"
        ));
    }
    if !row.get::<_, bool>(1) {
        return Err(crate::user_error!(
            "key `{key_name}`: {export_after:?} is shorter than older_than ({:?}); rows would be exported as soon as they are archived — make export_after at least older_than",
            p.older_than
        ));
    }
    Ok(())
}

/// A month of the archive table, or an archived partition.
struct Candidate {
    schema: String,
    name: String,
    month: Option<String>,
    range: Option<(String, String)>,
    rows: i64,
}

impl Candidate {
    fn relation_display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn quoted(&self) -> String {
        sql::qualified(&self.schema, &self.name)
    }
}

async fn months(x: &Ctx<'_>, cutoff: &str, tz: &str) -> anyhow::Result<Vec<Candidate>> {
    let (schema, name) = &x.archive;
    if inspect::relation(x.client, schema, name).await?.is_none() {
        return Ok(Vec::new());
    }
    let q = months_sql(&sql::qualified(schema, name), &x.s.column.name, x.s.key);
    let rows = x
        .client
        .query(&q, &[&cutoff, &tz])
        .await
        .with_context(|| format!("find the months of {schema}.{name} to export"))?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            schema: schema.clone(),
            name: name.clone(),
            month: Some(r.get(0)),
            range: Some((r.get(1), r.get(2))),
            rows: r.get(3),
        })
        .collect())
}

async fn partitions(x: &Ctx<'_>, cutoff: &str) -> anyhow::Result<Vec<Candidate>> {
    let schema = &x.p.archive_schema;
    if log::layout_problems(x.client, schema).await?.is_none() {
        return Ok(Vec::new());
    }
    let rows = x
        .client
        .query(
            &format!(
                "SELECT DISTINCT unnest(moved_partitions) FROM {} WHERE table_name = $1 ORDER BY 1",
                log::table(schema)
            ),
            &[&x.s.table.display()],
        )
        .await
        .context("read the partitions this policy archived (archive_log)")?;
    let prefix = format!("{schema}.");
    let mut out = Vec::new();
    for r in rows {
        let moved: String = r.get(0);
        let Some(name) = moved.strip_prefix(&prefix) else {
            continue;
        };
        if inspect::relation(x.client, schema, name).await?.is_none() {
            continue; // exported (dropped) earlier, or dropped by hand
        }
        let c = sql::ident(&x.s.column.name);
        let counts = x
            .client
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE {c} >= $1::text::{ty} OR {c} IS NULL) FROM {}",
                    sql::qualified(schema, name),
                    ty = x.s.key.sql()
                ),
                &[&cutoff],
            )
            .await
            .with_context(|| format!("count the rows of {schema}.{name}"))?;
        let (rows, newer): (i64, i64) = (counts.get(0), counts.get(1));
        if newer == 0 {
            out.push(Candidate {
                schema: schema.clone(),
                name: name.to_string(),
                month: None,
                range: None,
                rows,
            });
        }
    }
    Ok(out)
}

/// Export one candidate; the manifest and whether it was made by an earlier run.
async fn export_one(
    x: &Ctx<'_>,
    c: &Candidate,
    known: &[ExportManifest],
) -> anyhow::Result<(ExportManifest, bool)> {
    let client = x.client;
    let cols = export_columns(client, &c.schema, &c.name).await?;
    let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
    // What is dumped: the partition itself, or a staging table holding the month.
    let (dumped_schema, dumped_name) = match &c.range {
        None => (c.schema.clone(), c.name.clone()),
        Some((from, to)) => {
            let month = c.month.as_deref().unwrap_or_default().replace('-', "_");
            let staging = format!("{}_{month}", c.name);
            anyhow::ensure!(
                staging.len() <= 63,
                "the staging table name {staging} is longer than PostgreSQL's 63 bytes; give the archive table a shorter name"
            );
            let cond = month_condition(&x.s.column.name, x.s.key, from, to);
            stage(x, c, &staging, &names, &cond).await?;
            (c.schema.clone(), staging)
        }
    };
    let dumped_q = sql::qualified(&dumped_schema, &dumped_name);
    let (rows, fingerprint) = fingerprint(client, &names, &dumped_q).await?;
    let relation = c.relation_display();
    let existing = known.iter().find(|m| {
        m.database == x.db
            && m.relation == relation
            && m.month == c.month
            && m.rows == rows
            && m.fingerprint == fingerprint
    });
    let (m, reused) = match existing {
        Some(m) => (m.clone(), true),
        None => {
            let m = dump_and_verify(
                x,
                c,
                &cols,
                (&dumped_schema, &dumped_name),
                rows,
                &fingerprint,
            )
            .await?;
            (m, false)
        }
    };
    // Every repository that must hold the rows holds them before they are dropped
    // (an export reused from an earlier run is copied where it is still missing).
    copy_to_others(x.cfg, &m).await?;
    drop_exported(x, c, &m, &dumped_q).await?;
    Ok((m, reused))
}

/// The non-generated columns of `schema.name`, in order.
async fn export_columns(
    client: &Client,
    schema: &str,
    name: &str,
) -> anyhow::Result<Vec<ExportColumn>> {
    let oid = inspect::relation(client, schema, name)
        .await?
        .with_context(|| format!("{schema}.{name} does not exist"))?;
    Ok(catalog::columns(client, oid)
        .await?
        .into_iter()
        .filter(|c| !c.generated)
        .map(|c| ExportColumn {
            name: c.name,
            type_name: c.type_name,
            not_null: c.not_null,
        })
        .collect())
}

async fn fingerprint(
    client: &Client,
    cols: &[String],
    from: &str,
) -> anyhow::Result<(i64, String)> {
    let row = client
        .query_one(&fingerprint_sql(cols, &format!("{from} t")), &[])
        .await
        .with_context(|| format!("fingerprint the rows of {from}"))?;
    Ok((row.get(0), row.get(1)))
}

/// Build the staging table of one month (rebuilding one a killed run left).
async fn stage(
    x: &Ctx<'_>,
    c: &Candidate,
    staging: &str,
    names: &[String],
    cond: &str,
) -> anyhow::Result<()> {
    let staging_q = sql::qualified(&c.schema, staging);
    if let Some(oid) = inspect::relation(x.client, &c.schema, staging).await? {
        let comment: Option<String> = x
            .client
            .query_one("SELECT obj_description($1::oid, 'pg_class')", &[&oid])
            .await?
            .get(0);
        if comment.as_deref() != Some(STAGING_COMMENT) {
            return Err(crate::user_error!(
                "{}.{staging} exists and is not a staging table of backupctl; rename it so the month can be exported",
                c.schema
            ));
        }
    }
    let cols = sql::ident_list(names);
    let stmt = format!(
        "DROP TABLE IF EXISTS {staging_q};\n\
         CREATE TABLE {staging_q} (LIKE {src} INCLUDING ALL);\n\
         INSERT INTO {staging_q} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {src} WHERE {cond};\n\
         COMMENT ON TABLE {staging_q} IS {comment}",
        src = c.quoted(),
        comment = sql::literal(STAGING_COMMENT),
    );
    let stmt = &stmt;
    let lock_timeout = x.p.lock_timeout;
    let on = On {
        client: x.client,
        relations: vec![c.quoted()],
    };
    with_lock_retries(Some(on), &format!("stage {}.{staging}", c.schema), || {
        transaction(x.client, move |t| async move {
            set_local_lock_timeout(t, lock_timeout).await?;
            t.batch_execute(stmt).await?;
            anyhow::Ok(())
        })
    })
    .await
}

/// Steps 3–5: dump, read back and compare, write the manifest.
async fn dump_and_verify(
    x: &Ctx<'_>,
    c: &Candidate,
    cols: &[ExportColumn],
    (dumped_schema, dumped_name): (&str, &str),
    rows: i64,
    fingerprint: &str,
) -> anyhow::Result<ExportManifest> {
    let cfg = x.cfg;
    let repo = crate::repo::open(cfg).await?;
    let version: String = x
        .client
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .get(0);
    let major: u32 = x
        .client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await?
        .get::<_, i32>(0) as u32;
    let bin = PgBin::clients(&cfg.postgres, Some(major))?;
    let codec = Codec::from_config(&cfg.compression.for_kind(DataKind::Exports));
    let now = Utc::now();
    let id = ex::new_id(now, dumped_name);
    let object = format!("data.dump{}", codec.suffix());
    let key = layout::export_object_key(&id, &object);
    let params = ConnParams::from_config(&cfg.postgres)?.with_dbname(x.db);
    let child_env = params.child_env()?;
    let mut cmd = bin.std_command("pg_dump");
    cmd.args(["--format=custom", "--compress=0", "--table"])
        .arg(sql::qualified(dumped_schema, dumped_name));
    child_env.apply(&mut cmd);
    let (stored, ()) = transfer::put_stream(&repo, &key, codec, PutOptions::default(), move |w| {
        let mut dump = Proc::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()), "pg_dump")?;
        std::io::copy(&mut dump.take_stdout(), w).context("read pg_dump's output")?;
        let warnings = dump.finish()?;
        if !warnings.trim().is_empty() {
            tracing::warn!("pg_dump: {}", warnings.trim());
        }
        Ok(())
    })
    .await
    .with_context(|| format!("dump {dumped_schema}.{dumped_name} into {key}"))?;
    let mut m = ExportManifest {
        format: ex::FORMAT,
        id: id.clone(),
        created: now,
        database: x.db.to_string(),
        source_table: x.s.table.display(),
        mode: match x.p.mode {
            ArchiveMode::Rows => "rows".into(),
            ArchiveMode::Partitions => "partitions".into(),
        },
        relation: c.relation_display(),
        dumped_table: format!("{dumped_schema}.{dumped_name}"),
        column: x.s.column.name.clone(),
        month: c.month.clone(),
        from: c.range.as_ref().map(|r| r.0.clone()),
        to: c.range.as_ref().map(|r| r.1.clone()),
        columns: cols.to_vec(),
        primary_key: primary_key(x.client, dumped_schema, dumped_name).await?,
        rows,
        fingerprint: fingerprint.to_string(),
        object,
        stored: stored.stored.clone(),
        original_bytes: stored.size,
        server_version: version,
        pg_dump_version: crate::ops::backup::logical::version_of(&bin, "pg_dump")
            .unwrap_or_default(),
        verified: now,
    };
    // Read it back: the stored bytes, rendered by pg_restore, loaded, fingerprinted.
    let read_back = async {
        let work = super::workdir::create(cfg, "export")?;
        let (n, fp) = load(x.client, &repo, &bin, &m, work.path(), None).await?;
        anyhow::ensure!(
            n == rows && fp == fingerprint,
            "read back from the repository, the export holds {n} rows (fingerprint {fp}); the database has {rows} (fingerprint {fingerprint})"
        );
        anyhow::Ok(())
    };
    if let Err(e) = read_back.await {
        let _ = repo.delete(&key).await;
        return Err(e.context(format!(
            "verify export {id} by reading it back; nothing was dropped from the database"
        )));
    }
    m.verified = Utc::now();
    crate::failpoint::point("export.before-manifest");
    m.store(repo.as_ref()).await?;
    crate::failpoint::point("export.after-manifest");
    Ok(m)
}

/// Copy export `m`, complete in the repository `cfg` acts on, to every other
/// repository that receives exports and lacks it, its manifest last. The rows leave the database
/// only afterwards: a failed copy to a `required` repository is an error (nothing is
/// dropped; the export stays complete in `src`); to an optional one, a warning.
async fn copy_to_others(cfg: &Config, m: &ExportManifest) -> anyhow::Result<()> {
    let others: Vec<_> = cfg
        .repositories_for(crate::config::StoredKind::Exports)
        .into_iter()
        .filter(|r| r.name != cfg.repository.name)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let src = crate::repo::open(cfg).await?;
    let src = src.as_ref();
    for r in others {
        let copied = async {
            let dst = crate::repo::open(&cfg.with_repository(&r)).await?;
            if dst
                .head(&layout::export_manifest_key(&m.id))
                .await?
                .is_some()
            {
                return Ok(());
            }
            // Exports do not create repo.json: where the first repository has one
            // (written by a backup or by WAL archiving), the other must agree.
            if crate::repo::identity::RepoIdentity::load(src)
                .await?
                .is_some()
            {
                crate::repo::copy::ensure_same_cluster(src, dst.as_ref(), cfg.encryption.enabled())
                    .await?;
            }
            let key = layout::export_object_key(&m.id, &m.object);
            crate::repo::copy::copy_object(src, dst.as_ref(), &key, Some(m.stored.clone()), false)
                .await
                .with_context(|| format!("copy {key}"))?;
            m.store(dst.as_ref()).await
        }
        .await;
        match copied {
            Ok(()) => tracing::info!(export = %m.id, repository = %r.name, "export copied"),
            Err(e) if r.required => {
                return Err(e.context(format!(
                    "export {} is complete in repository {}, but its copy to repository {} failed; \
                     nothing was dropped from the database",
                    m.id, cfg.repository.name, r.name
                )))
            }
            Err(e) => tracing::warn!(
                export = %m.id,
                repository = %r.name,
                "export {} could not be copied to repository {} (required = false): {e:#}",
                m.id,
                r.name
            ),
        }
    }
    Ok(())
}

async fn primary_key(client: &Client, schema: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE n.nspname = $1 AND c.relname = $2)
                AND i.indisprimary
              ORDER BY k.ord",
            &[&schema, &name],
        )
        .await
        .context("read the primary key")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Step 6: delete what was exported, checked against the export, in one transaction.
async fn drop_exported(
    x: &Ctx<'_>,
    c: &Candidate,
    m: &ExportManifest,
    dumped_q: &str,
) -> anyhow::Result<()> {
    let names: Vec<String> = m.columns.iter().map(|c| c.name.clone()).collect();
    // Rows mode: the month's rows are deleted and fingerprinted in one statement.
    // Partitions mode: the partition is locked, fingerprinted again, then dropped.
    let (lock, check) = match &c.range {
        Some((from, to)) => {
            let cond = month_condition(&x.s.column.name, x.s.key, from, to);
            let cols = sql::ident_list(&names);
            let check = format!(
                "WITH d AS (DELETE FROM {} WHERE {cond} RETURNING {cols}) {}",
                c.quoted(),
                fingerprint_sql(&names, "d t")
            );
            (None, check)
        }
        None => (
            Some(format!("LOCK TABLE {dumped_q} IN ACCESS EXCLUSIVE MODE")),
            fingerprint_sql(&names, &format!("{dumped_q} t")),
        ),
    };
    let drop = format!("DROP TABLE {dumped_q}");
    let (lock, check, drop) = (&lock, &check, &drop);
    let lock_timeout = x.p.lock_timeout;
    let (rows, fp) = (m.rows, m.fingerprint.as_str());
    let what = format!("drop the exported rows of {}", c.relation_display());
    let on = On {
        client: x.client,
        relations: vec![c.quoted(), dumped_q.to_string()],
    };
    with_lock_retries(Some(on), &what, || {
        transaction(x.client, move |t| async move {
            set_local_lock_timeout(t, lock_timeout).await?;
            if let Some(lock) = lock {
                t.batch_execute(lock).await?;
            }
            let row = t.query_one(check.as_str(), &[]).await?;
            let got: (i64, String) = (row.get(0), row.get(1));
            if got.0 != rows || got.1 != fp {
                anyhow::bail!(
                    "the rows changed since they were exported ({rows} rows, fingerprint {fp}; now {} rows, fingerprint {}); nothing was dropped — the next run exports them again",
                    got.0,
                    got.1
                );
            }
            t.batch_execute(drop).await?;
            anyhow::Ok(())
        })
    })
    .await
}

/// Where [`load`] puts the rows: a table (quoted), and the statements that create it
/// (run in the same transaction; empty when it exists).
struct Into<'a> {
    target: &'a str,
    ddl: &'a [String],
}

/// Download export `m` (checksum verified), render its rows with pg_restore, and load
/// them into a temporary table, in a transaction: with `into`, they are then checked
/// against the manifest and inserted into that table, and the transaction commits;
/// without, it rolls back (a read-back check). Returns the rows and fingerprint of
/// what was loaded.
async fn load(
    client: &Client,
    repo: &Arc<dyn Repository>,
    bin: &PgBin,
    m: &ExportManifest,
    work: &Path,
    into: Option<Into<'_>>,
) -> anyhow::Result<(i64, String)> {
    let archive = work.join("export.dump");
    transfer::get_to_file(
        repo,
        &m.object_key(),
        algorithm_of(&m.object),
        Some(m.stored.clone()),
        &archive,
    )
    .await
    .with_context(|| format!("download export {}", m.id))?;
    let sql_path = work.join("rows.sql");
    let mut cmd = bin.std_command("pg_restore");
    cmd.args(["--data-only", "-f"])
        .arg(&sql_path)
        .arg(&archive)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    tokio::task::spawn_blocking(move || proc::run_checked(&mut cmd, "pg_restore")).await??;

    let names: Vec<String> = m.columns.iter().map(|c| c.name.clone()).collect();
    // The COPY header pg_restore writes for the dumped table (quoted as pg_dump does).
    let (schema, table) = m
        .dumped_table
        .split_once('.')
        .context("the manifest's dumped_table has no schema")?;
    let header: String = client
        .query_one(
            "SELECT format('COPY %s.%s (%s) FROM stdin;', quote_ident($1), quote_ident($2),
                    (SELECT string_agg(quote_ident(n), ', ' ORDER BY o) FROM unnest($3::text[]) WITH ORDINALITY u(n, o)))",
            &[&schema, &table, &names],
        )
        .await?
        .get(0);
    let temp_def = m
        .columns
        .iter()
        .map(|c| format!("{} {}", sql::ident(&c.name), c.type_name))
        .collect::<Vec<_>>()
        .join(", ");
    let cols = sql::ident_list(&names);
    client.batch_execute("BEGIN").await?;
    let result = async {
        if let Some(i) = &into {
            for stmt in i.ddl {
                client
                    .batch_execute(stmt)
                    .await
                    .with_context(|| format!("create {}", i.target))?;
            }
        }
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE backupctl_export_rows ({temp_def}) ON COMMIT DROP"
            ))
            .await
            .context("create a temporary table for the export's rows")?;
        let mut lines = tokio::io::BufReader::new(tokio::fs::File::open(&sql_path).await?).lines();
        let mut copies = 0;
        while let Some(line) = lines.next_line().await? {
            if !line.starts_with("COPY ") {
                continue;
            }
            copies += 1;
            anyhow::ensure!(
                line == header && copies == 1,
                "export {} does not hold the rows its manifest describes: pg_restore wrote {line:?}, expected {header:?}",
                m.id
            );
            crate::pg::copy::send_block(
                client,
                &mut lines,
                &format!("COPY pg_temp.backupctl_export_rows ({cols}) FROM STDIN"),
                &format!("the rows of export {}", m.id),
            )
            .await?;
        }
        // An export of an empty table has no COPY at all.
        anyhow::ensure!(
            copies > 0 || m.rows == 0,
            "export {} holds no rows; its manifest says {}",
            m.id,
            m.rows
        );
        let (n, fp) = fingerprint(client, &names, "pg_temp.backupctl_export_rows").await?;
        if let Some(Into { target, .. }) = &into {
            anyhow::ensure!(
                n == m.rows && fp == m.fingerprint,
                "export {} holds {n} rows (fingerprint {fp}); its manifest says {} (fingerprint {}); nothing was restored",
                m.id,
                m.rows,
                m.fingerprint
            );
            let inserted = client
                .execute(
                    &format!(
                        "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM pg_temp.backupctl_export_rows"
                    ),
                    &[],
                )
                .await
                .with_context(|| format!("insert the rows into {target}"))?;
            anyhow::ensure!(inserted as i64 == n, "inserted {inserted} rows, expected {n}");
        }
        anyhow::Ok((n, fp))
    }
    .await;
    let end = if result.is_ok() && into.is_some() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await;
    let out = result?;
    ended.with_context(|| format!("{end} the restored rows"))?;
    Ok(out)
}

/// `backupctl restore-export ID --into TABLE`.
#[derive(Debug, Clone)]
pub struct RestoreExport {
    pub id: String,
    /// `schema.table` or `table` (the connection's current schema), read as SQL reads it.
    pub into: String,
    /// Default: the database the export came from.
    pub database: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredExport {
    pub id: String,
    pub database: String,
    pub table: String,
    /// The table did not exist and was created.
    pub created: bool,
    pub rows: i64,
    pub dry_run: bool,
    /// What was (would be) run, in order.
    pub plan: Vec<String>,
}

/// Restore one export's rows into a table of the operator's choice: an existing table
/// whose columns include the export's with the same types, or a new one created with
/// the export's columns and primary key. One transaction; the rows are checked against
/// the manifest's count and fingerprint before COMMIT.
pub async fn restore(cfg: &Config, req: &RestoreExport) -> anyhow::Result<RestoredExport> {
    crate::repo::require_existing(cfg)?;
    let repo =
        crate::repo::open_for_reading(cfg, Some(crate::config::StoredKind::Exports), true).await?;
    let m = ExportManifest::load(repo.as_ref(), &req.id).await?;
    let db = req.database.clone().unwrap_or_else(|| m.database.clone());
    let params = ConnParams::from_config(&cfg.postgres)?.with_dbname(&db);
    let client = params.connect().await?;
    // The manifest is repository content: every type must be one PostgreSQL parses as
    // a type name, and nothing else, before it goes into a statement.
    for c in &m.columns {
        let ok = client
            .query_one("SELECT to_regtype($1) IS NOT NULL", &[&c.type_name])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        anyhow::ensure!(
            ok,
            "export {}: column {:?} has type {:?}, which is not a type in database {db}",
            m.id,
            c.name,
            c.type_name
        );
    }
    let parts: Vec<String> = client
        .query_one("SELECT parse_ident($1)", &[&req.into])
        .await
        .map_err(|e| {
            crate::user_error!(
                "--into {:?} is not a table name ({}); write schema.table",
                req.into,
                catalog::pg_message(&e)
            )
        })?
        .get(0);
    let (schema, name) = match parts.as_slice() {
        [n] => {
            let s: String = client
                .query_one("SELECT current_schema()::text", &[])
                .await?
                .get(0);
            (s, n.clone())
        }
        [s, n] => (s.clone(), n.clone()),
        _ => {
            return Err(crate::user_error!(
                "--into {:?} must be schema.table or table",
                req.into
            ))
        }
    };
    let target = sql::qualified(&schema, &name);
    let mut plan = Vec::new();
    let created = match inspect::relation(&client, &schema, &name).await? {
        Some(oid) => {
            let have = catalog::columns(&client, oid).await?;
            let mut problems = Vec::new();
            for c in &m.columns {
                match have.iter().find(|h| h.name == c.name) {
                    None => problems.push(format!("no column {:?}", c.name)),
                    Some(h) if h.generated => {
                        problems.push(format!("column {:?} is generated", c.name))
                    }
                    Some(h) if h.type_name != c.type_name => problems.push(format!(
                        "column {:?} is {}, the export's is {}",
                        c.name, h.type_name, c.type_name
                    )),
                    Some(_) => {}
                }
            }
            if !problems.is_empty() {
                return Err(crate::user_error!(
                    "table {schema}.{name} in database {db} does not fit export {}: {}; name a new table with --into (it is created) or one with the export's columns",
                    m.id,
                    problems.join("; ")
                ));
            }
            false
        }
        None => {
            if !inspect::schema_exists(&client, &schema).await? {
                plan.push(format!("CREATE SCHEMA {}", sql::ident(&schema)));
            }
            let mut defs: Vec<String> = m
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        sql::ident(&c.name),
                        c.type_name,
                        if c.not_null { " NOT NULL" } else { "" }
                    )
                })
                .collect();
            let pk: Vec<&String> = m
                .primary_key
                .iter()
                .filter(|k| m.columns.iter().any(|c| &c.name == *k))
                .collect();
            if !pk.is_empty() && pk.len() == m.primary_key.len() {
                defs.push(format!("PRIMARY KEY ({})", sql::ident_list(&pk)));
            }
            plan.push(format!("CREATE TABLE {target} ({})", defs.join(", ")));
            true
        }
    };
    let names: Vec<String> = m.columns.iter().map(|c| c.name.clone()).collect();
    plan.push(format!(
        "COPY the export's {} rows into a temporary table, check count and fingerprint; INSERT INTO {target} ({}) SELECT …",
        m.rows,
        sql::ident_list(&names)
    ));
    let mut out = RestoredExport {
        id: m.id.clone(),
        database: db.clone(),
        table: format!("{schema}.{name}"),
        created,
        rows: m.rows,
        dry_run: req.dry_run,
        plan,
    };
    if req.dry_run {
        return Ok(out);
    }
    let major: i32 = client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await?
        .get(0);
    let bin = PgBin::clients(&cfg.postgres, Some(major as u32))?;
    let work = super::workdir::create(cfg, "export")?;
    let ddl: Vec<String> = out
        .plan
        .iter()
        .filter(|s| s.starts_with("CREATE"))
        .cloned()
        .collect();
    let into = Into {
        target: &target,
        ddl: &ddl,
    };
    let (n, _) = load(&client, &repo, &bin, &m, work.path(), Some(into)).await?;
    out.rows = n;
    Ok(out)
}
