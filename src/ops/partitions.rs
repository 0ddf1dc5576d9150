//! `backupctl partitions [--dry-run]`: create the monthly partitions each `[[partitions]]`
//! policy asks for — the current month in the policy's time zone and `premake` months
//! ahead — from the catalog's view of what exists, named by the policy's `name_format`.
//! Past months missing between the oldest partition and now are reported with the SQL
//! that creates them, and created when the policy says `backfill = true`.
//!
//! One run at a time: the host-wide `partitions` job lock plus a PostgreSQL advisory lock
//! per database (other hosts). Each partition is created in its own short transaction
//! under `lock_timeout`, retried when it loses a lock race, so one stubborn month never
//! undoes the others. A month whose rows already sit in the default partition is not
//! created (PostgreSQL would refuse, after scanning the default partition under an
//! exclusive lock); it is reported as blocked with the row count and the SQL that
//! resolves it. [`run`] returns the report so the daemon can reuse it.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_postgres::Client;

use crate::config::Config;
use crate::config::PartitionPolicy;
use crate::error::{LockHeld, UserError};
use crate::jobs::JobKind;
use crate::lock::{self, Wait};
use crate::partitions::calendar::{wanted_months, KeyType};
use crate::partitions::catalog::{self, Child, RangeKey, Table};
use crate::partitions::plan::{self, Existing, MonthPlan, MonthState};
pub use crate::partitions::report::{MonthReport, PartitionsSummary, Status, TableReport};
use crate::pg::advisory::{self, Job};
use crate::pg::conn::ConnParams;
use crate::pg::retry::{set_local_lock_timeout, transaction, with_lock_retries, On};
use crate::pg::sql;

/// Run every `[[partitions]]` policy now. Errors only for what stops the whole run (job
/// lock held, config); per-table problems are in the report.
pub async fn run(cfg: &Config, dry_run: bool, wait: Wait) -> anyhow::Result<PartitionsSummary> {
    run_at(cfg, dry_run, Utc::now(), wait).await
}

/// [`run`] with the clock given: the months depend only on `now` and the policies.
pub async fn run_at(
    cfg: &Config,
    dry_run: bool,
    now: DateTime<Utc>,
    wait: Wait,
) -> anyhow::Result<PartitionsSummary> {
    let _host_lock = if dry_run || cfg.partitions.is_empty() {
        None
    } else {
        Some(host_lock(&cfg.backup.state_dir, JobKind::Partitions, wait).await?)
    };
    let params = ConnParams::from_config(&cfg.postgres)?;
    let mut by_db: BTreeMap<String, Vec<&PartitionPolicy>> = BTreeMap::new();
    for p in &cfg.partitions {
        let db = p.database.clone().unwrap_or_else(|| params.dbname.clone());
        by_db.entry(db).or_default().push(p);
    }
    let mut tables = Vec::new();
    for (db, policies) in by_db {
        let client = match advisory::job_session(&params, &db, Job::Partitions, !dry_run).await {
            Ok(c) => c,
            Err(e) if crate::error::is_lock_held(&e) => return Err(e),
            Err(e) => {
                for p in policies {
                    let mut r = TableReport::new(p, &db);
                    r.error = Some(format!("{e:#}"));
                    tables.push(r);
                }
                continue;
            }
        };
        for p in policies {
            let mut report = TableReport::new(p, &db);
            if let Err(e) = policy(&client, p, &db, now, dry_run, &mut report).await {
                report.refused = e.chain().any(|c| c.is::<UserError>());
                tracing::error!(table = %p.table, database = %db, "{e:#}");
                report.error = Some(format!("{e:#}"));
            }
            tables.push(report);
        }
        if !dry_run {
            advisory::release(&client, Job::Partitions).await.ok();
        }
    }
    Ok(PartitionsSummary {
        dry_run,
        now,
        tables,
    })
}

async fn policy(
    client: &Client,
    p: &PartitionPolicy,
    db: &str,
    now: DateTime<Utc>,
    dry_run: bool,
    report: &mut TableReport,
) -> anyhow::Result<()> {
    let tz: Tz = p
        .timezone
        .parse()
        .map_err(|_| crate::user_error!("unknown time zone {}", p.timezone))?;
    // Existing timestamptz bounds print in the policy's zone, like the ones we write.
    client
        .query_one("SELECT set_config('TimeZone', $1, false)", &[&p.timezone])
        .await
        .context("set TimeZone")?;
    let table = catalog::resolve(client, &p.table, db).await?;
    let key = catalog::range_key(client, &table).await?;
    report.key = Some(key.clone());
    let children = catalog::children(client, &table, key.key).await?;
    let existing: Vec<Existing> = children
        .iter()
        .map(|c| Existing {
            display: c.display(),
            bound: c.bound.clone(),
            range: c.range,
        })
        .collect();
    let wanted = wanted_months(now, tz, p.premake);
    let past = plan::backfill_months(&existing, key.key, tz, wanted[0]);
    let months: Vec<_> = past.iter().chain(&wanted).copied().collect();
    let names = months
        .iter()
        .map(|m| plan::partition_name(&p.name_format, &table.name, *m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::user_error!("table {}: {e}", table.display()))?;
    let taken = catalog::taken_names(client, &table.schema, &names).await?;
    let planned = plan::plan_months(
        &months,
        key.key,
        tz,
        &p.name_format,
        &table.name,
        &existing,
        &taken,
    )
    .map_err(|e| crate::user_error!("table {}: {e}", table.display()))?;
    let default = children.iter().find(|c| c.is_default);
    for m in planned {
        let backfill = m.month < wanted[0];
        // Past months that have their partition (or sit inside a wider one) are history
        // as it should be; only gaps and conflicts are reported.
        if backfill
            && matches!(
                m.state,
                MonthState::Exists { .. } | MonthState::Covered { .. }
            )
        {
            continue;
        }
        let create = !backfill || p.backfill;
        let r = month(client, p, &table, &key, default, m, dry_run, create).await;
        if r.status == Status::Created {
            tracing::info!(table = %table.display(), partition = %r.partition, backfill, "created partition {} {} … {}", r.month, r.from, r.to);
        }
        report.months.push(MonthReport { backfill, ..r });
    }
    let missing = report
        .months
        .iter()
        .filter(|m| m.status == Status::Missing)
        .count();
    if missing > 0 {
        tracing::warn!(
            table = %table.display(),
            months = missing,
            "months between the oldest partition and now have no partition; set backfill = true to create them"
        );
    }
    Ok(())
}

/// Decide, and unless `dry_run` or `!create` act on, one month. A month to create that
/// the policy does not create (a past month without `backfill`) is `Missing`.
#[allow(clippy::too_many_arguments)]
async fn month(
    client: &Client,
    p: &PartitionPolicy,
    table: &Table,
    key: &RangeKey,
    default: Option<&Child>,
    m: MonthPlan,
    dry_run: bool,
    create: bool,
) -> MonthReport {
    let mut r = MonthReport {
        backfill: false,
        month: m.month.label(),
        partition: format!("{}.{}", table.schema, m.name),
        from: m.range.from.literal.clone(),
        to: m.range.to.literal.clone(),
        status: Status::Exists,
        detail: None,
        sql: None,
        default_rows: None,
        resolve: None,
    };
    match m.state {
        MonthState::Exists { partition } => {
            if partition != r.partition {
                r.detail = Some(format!("exists as {partition}"));
            }
        }
        MonthState::Covered { partition, bound } => {
            r.status = Status::Covered;
            r.detail = Some(format!("inside existing partition {partition} ({bound})"));
        }
        MonthState::Overlap { partitions } => {
            r.status = Status::Overlap;
            r.detail = Some(format!(
                "existing partition(s) {} overlap part of this month; not created — adjust them or create this month's partition by hand",
                partitions.join(", ")
            ));
        }
        MonthState::NameTaken => {
            r.status = Status::NameTaken;
            r.detail = Some(format!(
                "a relation named {} already exists and is not a partition with this month's bounds; rename it",
                r.partition
            ));
        }
        MonthState::Create => {
            let create_sql = plan::create_sql(&table.schema, &table.name, &m.name, &m.range);
            r.sql = Some(create_sql.clone());
            if let Some(d) = default {
                match default_rows(client, d, &key.column, key.key, &m).await {
                    Ok(0) => {}
                    Ok(n) => {
                        block(client, table, key, d, &m, n, &mut r).await;
                        return r;
                    }
                    Err(e) => {
                        r.status = Status::Failed;
                        r.detail = Some(format!("{e:#}"));
                        return r;
                    }
                }
            }
            if !create {
                r.status = Status::Missing;
                r.detail = Some(
                    "no partition for this month, which lies between the oldest partition and now; create it with the SQL shown or set backfill = true".into(),
                );
                return r;
            }
            if dry_run {
                r.status = Status::WouldCreate;
                return r;
            }
            let what = format!("create partition {}", r.partition);
            let on = On {
                client,
                relations: vec![table.quoted()],
            };
            let res = with_lock_retries(Some(on), &what, || {
                transaction(client, |c| async {
                    set_local_lock_timeout(c, p.lock_timeout).await?;
                    c.batch_execute(&create_sql).await?;
                    anyhow::Ok(())
                })
            })
            .await;
            match res {
                Ok(()) => r.status = Status::Created,
                Err(e) if is_check_violation(&e) => {
                    // Rows arrived in the default partition after we counted.
                    let n = match default {
                        Some(d) => default_rows(client, d, &key.column, key.key, &m)
                            .await
                            .unwrap_or(-1),
                        None => -1,
                    };
                    match default {
                        Some(d) => block(client, table, key, d, &m, n, &mut r).await,
                        None => {
                            r.status = Status::Failed;
                            r.detail = Some(format!("{what}: {e:#}"));
                        }
                    }
                }
                Err(e) => {
                    r.status = Status::Failed;
                    r.detail = Some(format!("{what}: {e:#}"));
                }
            }
        }
    }
    r
}

async fn block(
    client: &Client,
    table: &Table,
    key: &RangeKey,
    d: &Child,
    m: &MonthPlan,
    rows: i64,
    r: &mut MonthReport,
) {
    r.status = Status::Blocked;
    r.default_rows = Some(rows);
    r.detail = Some(format!(
        "default partition {} holds {rows} row(s) of this month; the partition cannot be created until they move (run the resolve SQL)",
        d.display()
    ));
    let columns = match catalog::columns(client, table.oid).await {
        Ok(cols) => cols
            .into_iter()
            .filter(|c| !c.generated)
            .map(|c| c.name)
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    r.resolve = Some(plan::resolve_blocked_sql(
        &table.schema,
        &table.name,
        &d.schema,
        &d.name,
        &m.name,
        &key.column,
        key.key,
        &m.range,
        &columns,
    ));
}

async fn default_rows(
    client: &Client,
    d: &Child,
    column: &str,
    key: KeyType,
    m: &MonthPlan,
) -> anyhow::Result<i64> {
    let q = format!(
        "SELECT count(*) FROM {} WHERE {col} >= {}::{ty} AND {col} < {}::{ty}",
        d.quoted(),
        sql::literal(&m.range.from.literal),
        sql::literal(&m.range.to.literal),
        col = sql::ident(column),
        ty = key.sql()
    );
    let row = client.query_one(&q, &[]).await.with_context(|| {
        format!(
            "count rows of {} in default partition {}",
            m.month.label(),
            d.display()
        )
    })?;
    Ok(row.get(0))
}

fn is_check_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .is_some_and(|code| *code == tokio_postgres::error::SqlState::CHECK_VIOLATION)
    })
}

/// The host-wide job lock. The CLI and the daemon pass [`Wait::No`]: a scheduled run
/// must not queue behind a long one, and an operator is told who holds it. Shared with
/// `archive`.
pub(crate) async fn host_lock(
    state_dir: &std::path::Path,
    job: JobKind,
    wait: Wait,
) -> anyhow::Result<lock::JobLock> {
    job.lock(state_dir, wait).await.map_err(|e| {
        match e.downcast_ref::<LockHeld>() {
            // lock.rs words its message for commands with --no-wait; these have none.
            Some(held) => LockHeld {
                message: held.message.replace(
                    "wait for it, or run without --no-wait to queue behind it",
                    "wait for it to finish",
                ),
                lock: held.lock.clone(),
                holder: held.holder.clone(),
                by_this_process: held.by_this_process,
            }
            .into(),
            None => e,
        }
    })
}
