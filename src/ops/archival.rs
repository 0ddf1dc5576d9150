//! `backupctl archive [--dry-run [--exact]]`: for each `[[archive]]` policy, move rows
//! (mode `rows`, into `archive_table` or `<archive_schema>.<table>`) or whole partitions
//! (mode `partitions`, into the archive schema) older than `now() - older_than` (rounded
//! down to the day or month with `align`), and record each run in `archive_log` — with
//! the policy's `audit_sql` in the transaction that closes the row.
//!
//! Before anything moves, the whole plan is checked: the source and its column, the
//! cutoff (computed once per run), foreign keys referencing the source (refused unless
//! `on_foreign_keys = "ignore"`: deleting referenced rows would fail or cascade), an
//! existing archive table whose columns differ, an `archive_log` of another layout, an
//! audit statement that does not prepare. `--dry-run` stops there and prints the exact
//! SQL with the planner's row estimates (or, with `--exact`, counts).
//!
//! One run at a time: the host-wide `archive` job lock plus a PostgreSQL advisory lock
//! per database (other hosts). Partition-mode policies run before row-mode ones so whole
//! old partitions are detached before rows are moved one by one. [`run`] returns the
//! report so the daemon can reuse it.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;

use tokio_postgres::Client;

use crate::archival::audit::{self, Audit};
use crate::archival::count;
use crate::archival::export::PolicyExports;
use crate::archival::inspect::{self, Leaf, Source};
use crate::archival::log::{self, Start};
use crate::archival::partmode::{self, PartStatus};
use crate::archival::plan::{self as aplan, Batch, Fate};
pub use crate::archival::report::{ArchiveSummary, TableArchive, TableStatus};
use crate::archival::rows::{self, RowStats};
use crate::config::Config;
use crate::config::{ArchiveMode, ArchivePolicy, OnForeignKeys};
use crate::error::UserError;
use crate::host::local_hostname as hostname;
use crate::jobs::JobKind;
use crate::lock::Wait;
use crate::partitions::catalog;
use crate::pg::advisory::{self, Job};
use crate::pg::conn::ConnParams;
use crate::pg::retry::{
    lock_timeout_sql, set_local_lock_timeout, transaction, with_lock_retries, On,
};
use crate::pg::sql;

use super::export;

/// Run every `[[archive]]` policy now. Errors only for what stops the whole run (job
/// lock held, config); per-table outcomes are in the report.
pub async fn run(cfg: &Config, dry_run: bool, wait: Wait) -> anyhow::Result<ArchiveSummary> {
    run_with(
        cfg,
        Options {
            dry_run,
            exact: false,
        },
        wait,
    )
    .await
}

/// What an `archive` run does besides moving.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Plan and report only.
    pub dry_run: bool,
    /// Count the rows to move instead of only estimating them (with `dry_run`).
    pub exact: bool,
}

/// [`run`] with [`Options`].
pub async fn run_with(cfg: &Config, opts: Options, wait: Wait) -> anyhow::Result<ArchiveSummary> {
    let Options { dry_run, exact } = opts;
    // Exports go to the first (required) repository that receives them.
    let routed;
    let cfg = if cfg.archive.is_empty() {
        cfg
    } else {
        routed = cfg.with_repository(&super::backup::copies::first_for(
            cfg,
            crate::config::StoredKind::Exports,
        )?);
        &routed
    };
    let _host_lock = if dry_run || cfg.archive.is_empty() {
        None
    } else {
        Some(super::partitions::host_lock(&cfg.backup.state_dir, JobKind::Archive, wait).await?)
    };
    let run_id = format!(
        "{}-{:08x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        fastrand::u32(..)
    );
    let params = ConnParams::from_config(&cfg.postgres)?;
    let db_of = |p: &ArchivePolicy| p.database.clone().unwrap_or_else(|| params.dbname.clone());
    // Partition moves first: whole old partitions leave before rows move one by one.
    let mut order: Vec<(usize, &ArchivePolicy)> = cfg.archive.iter().enumerate().collect();
    order.sort_by_key(|(i, p)| (p.mode == ArchiveMode::Rows, *i));
    let mut by_db: BTreeMap<String, Vec<(usize, &ArchivePolicy)>> = BTreeMap::new();
    for (i, p) in order {
        by_db.entry(db_of(p)).or_default().push((i, p));
    }
    let rows_tables: Vec<(String, String)> = cfg
        .archive
        .iter()
        .filter(|p| p.mode == ArchiveMode::Rows)
        .map(|p| (db_of(p), p.table.clone()))
        .collect();
    let mut targets: HashMap<(String, String, String), String> = HashMap::new();
    let mut tables = Vec::new();
    for (db, policies) in by_db {
        let client = match advisory::job_session(&params, &db, Job::Archive, !dry_run).await {
            Ok(c) => c,
            Err(e) if crate::error::is_lock_held(&e) => return Err(e),
            Err(e) => {
                for (_, p) in policies {
                    let mut r = TableArchive::new(p, &db, dry_run);
                    r.status = TableStatus::Failed;
                    r.error = Some(format!("{e:#}"));
                    tables.push(r);
                }
                continue;
            }
        };
        for (i, p) in policies {
            let mut r = TableArchive::new(p, &db, dry_run);
            let ctx = PolicyCtx {
                cfg,
                client: &client,
                index: i,
                p,
                db: &db,
                dry_run,
                exact,
                run_id: &run_id,
                rows_policy: rows_tables.contains(&(db.clone(), p.table.clone())),
            };
            if let Err(e) = policy(&ctx, &mut targets, &mut r).await {
                let refused = e.chain().any(|c| c.is::<UserError>());
                r.status = if refused {
                    TableStatus::Refused
                } else {
                    TableStatus::Failed
                };
                tracing::error!(table = %p.table, database = %db, "archive {}: {e:#}", p.table);
                r.error = Some(format!("{e:#}"));
            }
            tables.push(r);
        }
        if !dry_run {
            advisory::release(&client, Job::Archive).await.ok();
        }
    }
    Ok(ArchiveSummary {
        dry_run,
        run_id,
        tables,
    })
}

struct PolicyCtx<'a> {
    cfg: &'a Config,
    client: &'a Client,
    index: usize,
    p: &'a ArchivePolicy,
    db: &'a str,
    dry_run: bool,
    exact: bool,
    run_id: &'a str,
    /// A rows-mode policy exists for the same table (takes straddling partitions' rows).
    rows_policy: bool,
}

async fn policy(
    x: &PolicyCtx<'_>,
    targets: &mut HashMap<(String, String, String), String>,
    r: &mut TableArchive,
) -> anyhow::Result<()> {
    let planned = plan(x, targets, r).await?;
    let (s, archive) = (planned.s.clone(), planned.archive.clone());
    export::check(x.client, x.p, x.index).await?;
    if !x.dry_run {
        execute(x, planned, r).await?;
    }
    if x.p.export_after.is_none() {
        return Ok(());
    }
    let ctx = export::Ctx {
        cfg: x.cfg,
        client: x.client,
        db: x.db,
        p: x.p,
        index: x.index,
        s: &s,
        archive,
        dry_run: x.dry_run,
    };
    let mut exports = PolicyExports::default();
    let res = export::run_policy(&ctx, &mut exports).await;
    let failed = exports.failed();
    r.exports = Some(exports);
    res?;
    if !failed.is_empty() {
        anyhow::bail!(
            "export to the repository failed for {} (their rows stay in the database)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// A checked policy: everything `execute` needs.
struct Planned {
    s: Source,
    cutoff: String,
    ddl: Vec<String>,
    columns: Vec<String>,
    leaves: Vec<Leaf>,
    /// Quoted table rows move into (rows mode).
    archive_q: String,
    /// The same, (schema, name).
    archive: (String, String),
    audit: Option<Audit>,
}

/// Check the policy and build its plan (SQL and estimates into `r`); refusals are user
/// errors, returned only after the whole plan is in the report.
async fn plan(
    x: &PolicyCtx<'_>,
    targets: &mut HashMap<(String, String, String), String>,
    r: &mut TableArchive,
) -> anyhow::Result<Planned> {
    let (client, p) = (x.client, x.p);
    let s = inspect::source(client, p, x.db).await?;
    r.source = Some(s.table.display());
    let (target_schema, target_name) = inspect::archive_target(
        client,
        p,
        &s.table,
        &format!("archive[{}].archive_table", x.index),
    )
    .await?;
    if (&target_schema, &target_name) == (&s.table.schema, &s.table.name) {
        return Err(crate::user_error!(
            "key `archive[{}].archive_table`: {}.{} is the source table itself; name another table",
            x.index,
            target_schema,
            target_name
        ));
    }
    if p.archive_table.is_none() && p.archive_schema == s.table.schema {
        return Err(crate::user_error!(
            "key `archive[{}].archive_schema`: {:?} is the schema of {} itself; archive into another schema",
            x.index,
            p.archive_schema,
            s.table.display()
        ));
    }
    let (cutoff, cutoff_pos) = inspect::cutoff(
        client,
        p,
        s.key,
        &format!("archive[{}].older_than", x.index),
    )
    .await?;
    r.cutoff = Some(cutoff.clone());
    r.foreign_keys = inspect::referencing_foreign_keys(client, &s.table).await?;
    let mut refusals = Vec::new();
    if !r.foreign_keys.is_empty() {
        match p.on_foreign_keys {
            OnForeignKeys::Refuse => refusals.push(format!(
                "foreign keys reference {} ({}); deleting archived rows would fail or cascade — drop or rework them, or set on_foreign_keys = \"ignore\" in archive[{}] to proceed anyway",
                s.table.display(),
                r.foreign_keys.join("; "),
                x.index
            )),
            OnForeignKeys::Ignore => r.notes.push("foreign keys reference this table; proceeding because on_foreign_keys = \"ignore\"".into()),
        }
    }
    let audit = match &p.audit_sql {
        None => None,
        Some(text) => {
            let key = format!("archive[{}].audit_sql", x.index);
            match audit::check(client, &key, x.db, text).await {
                Ok(a) => Some(a),
                Err(refusal) => {
                    refusals.push(refusal);
                    None
                }
            }
        }
    };
    let log_q = log::table(&p.archive_schema);
    let mut ddl = Vec::new();
    let mut schemas = vec![&p.archive_schema];
    if p.mode == ArchiveMode::Rows && target_schema != p.archive_schema {
        schemas.push(&target_schema);
    }
    for schema in schemas {
        if !inspect::schema_exists(client, schema).await? {
            ddl.push(aplan::create_schema_sql(schema));
        }
    }
    match log::layout_problems(client, &p.archive_schema).await? {
        None => ddl.push(aplan::create_log_sql(&log_q)),
        Some(problems) if !problems.is_empty() => refusals.push(format!(
            "{}.archive_log exists with another layout ({}); rename it or set archive_schema",
            p.archive_schema,
            problems.join(", ")
        )),
        Some(_) => {}
    }
    let columns: Vec<String> = s.columns.iter().map(|c| c.name.clone()).collect();
    let mut leaves = Vec::new();
    let mut parts = Vec::new();
    match p.mode {
        ArchiveMode::Rows => {
            let target = (x.db.to_string(), target_schema.clone(), target_name.clone());
            if let Some(other) = targets.get(&target).filter(|o| **o != s.table.display()) {
                refusals.push(format!(
                    "{target_schema}.{target_name} already receives the rows of {other} in this run; give one of them another archive_table"
                ));
            }
            targets.insert(target, s.table.display());
            let archive_q = sql::qualified(&target_schema, &target_name);
            r.archive_table = Some(format!("{target_schema}.{target_name}"));
            match inspect::relation(client, &target_schema, &target_name).await? {
                Some(oid) => {
                    let cols = catalog::columns(client, oid).await?;
                    let m = aplan::column_mismatches(&s.columns, &cols, &archive_q);
                    if !m.is_empty() {
                        refusals.push(format!(
                            "archive table {target_schema}.{target_name} does not match {}: {}",
                            s.table.display(),
                            m.join("; ")
                        ));
                    }
                }
                None => ddl.push(aplan::create_archive_table_sql(
                    &archive_q,
                    &s.table.quoted(),
                )),
            }
            let triggers = inspect::delete_triggers(client, &s.table).await?;
            if !triggers.is_empty() {
                r.notes.push(format!(
                    "ON DELETE triggers fire for every archived row: {}",
                    triggers.join(", ")
                ));
            }
            leaves = inspect::leaves(client, &s, &cutoff, cutoff_pos).await?;
            r.estimated_rows = Some(leaves.iter().map(|l| l.estimated_rows).sum());
            let oids: Vec<u32> = leaves.iter().map(|l| l.oid).collect();
            r.analyzed = Some(count::analyzed(client, &oids).await?);
            if x.exact {
                r.counted_rows = Some(count::leaves(client, &s, &cutoff, &mut leaves).await?);
            }
            r.sql = ddl.clone();
            for leaf in &leaves {
                let batch = aplan::batch_sql(&Batch {
                    leaf: &leaf.quoted,
                    archive: &archive_q,
                    columns: &columns,
                    column: &s.column.name,
                    key: s.key,
                    cutoff: &cutoff,
                    limit: p.batch_size,
                    cursor: &leaf.cursor,
                    after: None,
                    log: &log_q,
                    log_id: 0,
                });
                r.sql.push(aplan::transaction_text(&[
                    &lock_timeout_sql(p.lock_timeout),
                    aplan::batch_settings(&leaf.cursor),
                    &batch,
                ]));
            }
            r.leaves = leaves.clone();
        }
        ArchiveMode::Partitions => {
            let key = catalog::range_key(client, &s.table).await?;
            if key.column != s.column.name {
                return Err(crate::user_error!(
                    "table {} is partitioned by {}, not by {}; partitions mode needs the archival column to be the range key (use mode = \"rows\")",
                    s.table.display(),
                    key.definition,
                    s.column.name
                ));
            }
            parts = partmode::plan(
                client,
                &s,
                &key,
                &cutoff,
                cutoff_pos,
                &p.archive_schema,
                x.rows_policy,
                &log_q,
            )
            .await?;
            r.estimated_rows = Some(
                parts
                    .iter()
                    .filter(|q| q.status == PartStatus::WouldMove)
                    .map(|q| q.estimated_rows)
                    .sum(),
            );
            let oids: Vec<u32> = parts
                .iter()
                .filter(|q| q.fate != Fate::Newer)
                .filter_map(|q| q.child.as_ref().map(|c| c.oid))
                .collect();
            r.analyzed = Some(count::analyzed(client, &oids).await?);
            if x.exact {
                r.counted_rows = Some(
                    count::partitions(client, &key.column, key.key, &cutoff, &mut parts).await?,
                );
            }
            r.sql = ddl.clone();
            for q in &parts {
                if let Some(stmt) = &q.sql {
                    r.sql.push(aplan::transaction_text(&[
                        &lock_timeout_sql(p.lock_timeout),
                        stmt,
                    ]));
                }
            }
        }
    }
    r.partitions = parts;
    if let Some(a) = &audit {
        r.sql.push(a.plan_text());
    }
    if !refusals.is_empty() {
        return Err(crate::user_error!("{}", refusals.join("; ")));
    }
    Ok(Planned {
        audit,
        s,
        cutoff,
        ddl,
        columns,
        leaves,
        archive_q: sql::qualified(&target_schema, &target_name),
        archive: (target_schema, target_name),
    })
}

/// Create what is missing, open the `archive_log` row, move, close the row.
async fn execute(x: &PolicyCtx<'_>, planned: Planned, r: &mut TableArchive) -> anyhow::Result<()> {
    let (client, p) = (x.client, x.p);
    let Planned {
        s,
        cutoff,
        ddl,
        columns,
        leaves,
        archive_q,
        audit,
        ..
    } = planned;
    let audit = audit.as_ref();
    if !ddl.is_empty() {
        let ddl = &ddl;
        let on = On {
            client,
            relations: vec![s.table.quoted(), archive_q.clone()],
        };
        with_lock_retries(Some(on), "create the archive schema, table and log", || {
            transaction(client, move |c| async move {
                set_local_lock_timeout(c, p.lock_timeout).await?;
                for stmt in ddl {
                    c.batch_execute(stmt).await?;
                }
                anyhow::Ok(())
            })
        })
        .await?;
    }
    let host = hostname();
    let archive_table = r
        .archive_table
        .clone()
        .unwrap_or_else(|| p.archive_schema.clone());
    let entry = log::start(
        client,
        &p.archive_schema,
        &Start {
            run_id: x.run_id,
            table: &s.table.display(),
            archive_table: &archive_table,
            mode: r.mode,
            cutoff: &cutoff,
            older_than: &p.older_than,
            host: &host,
        },
    )
    .await?;
    r.log_id = Some(entry.id);
    match p.mode {
        ArchiveMode::Rows => {
            let job = rows::Job {
                client,
                source: &s.table.display(),
                archive: &archive_q,
                columns: &columns,
                column: &s.column.name,
                key: s.key,
                cutoff: &cutoff,
                batch_size: p.batch_size,
                lock_timeout: p.lock_timeout,
                log: &entry,
            };
            let mut stats = RowStats::default();
            let res = rows::run(&job, &leaves, &mut stats).await;
            tracing::info!(
                table = %s.table.display(),
                rows = stats.rows_moved,
                batches = stats.batches,
                rows_per_second = stats.rows_per_second.round(),
                longest_batch_ms = stats.longest_batch_ms.round(),
                "archived rows older than {cutoff} into {archive_table}"
            );
            r.rows = Some(stats);
            if let Err(e) = res {
                entry.fail(client, &format!("{e:#}"), audit).await;
                return Err(e);
            }
        }
        ArchiveMode::Partitions => {
            r.partitions_moved = partmode::execute(
                client,
                &s,
                &p.archive_schema,
                p.lock_timeout,
                &entry,
                &mut r.partitions,
            )
            .await;
            let stuck: Vec<String> = r
                .partitions
                .iter()
                .filter(|q| matches!(q.status, PartStatus::Failed | PartStatus::NameTaken))
                .map(|q| q.partition.clone())
                .collect();
            if !stuck.is_empty() {
                let msg = format!(
                    "{} partition(s) not moved: {}",
                    stuck.len(),
                    stuck.join(", ")
                );
                entry.fail(client, &msg, audit).await;
                anyhow::bail!("{msg}");
            }
        }
    }
    if let Err(e) = entry.finish(client, audit).await {
        entry.fail(client, &format!("{e:#}"), None).await;
        return Err(e);
    }
    Ok(())
}
