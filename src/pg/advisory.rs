//! PostgreSQL advisory locks that keep one run of a job per database across hosts.
//!
//! The host-wide `flock` (`lock.rs`) only protects one machine; two hosts (a primary's
//! standby-to-be, a second app server) can point the same job at the same database. A
//! session-level advisory lock, taken on the connection the job uses, closes that gap:
//! PostgreSQL drops it when the session ends, however the client died, so a killed run
//! never leaves a stale lock. Keys use the two-`int4` form: [`CLASS`] plus one id per job.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::Client;

use crate::error::LockHeld;

/// First key of every backupctl advisory lock ("bctl").
pub const CLASS: i32 = 0x6263_746c;

/// Jobs that hold an advisory lock; the discriminant is the second key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Partitions = 1,
    Archive = 2,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Partitions => "partitions",
            Job::Archive => "archive",
        }
    }
}

/// Take the job's lock on this session, polling for up to `wait` (a killed run's backend
/// can take a moment to notice its client is gone). When another session keeps it, fail
/// with exit code 3 and say who holds it.
pub async fn acquire(
    client: &Client,
    job: Job,
    database: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&CLASS, &(job as i32)],
            )
            .await
            .with_context(|| {
                format!(
                    "take the {} advisory lock in database {database}",
                    job.name()
                )
            })?
            .get(0);
        if got {
            return Ok(());
        }
        if started.elapsed() >= wait {
            let who = holder(client, job)
                .await
                .unwrap_or_else(|e| format!("holder unknown: {e:#}"));
            return Err(LockHeld {
                message: format!(
                    "another {} run holds the PostgreSQL advisory lock ({CLASS}, {}) in database {database}: {who}; \
                     wait for it to finish (only one run at a time across all hosts)",
                    job.name(),
                    job as i32
                ),
                lock: format!("{} advisory lock in database {database}", job.name()),
                holder: who,
                by_this_process: false,
            }
            .into());
        }
        if !announced {
            tracing::info!(
                database,
                job = job.name(),
                "waiting for the advisory lock held by another run"
            );
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Release the lock (it is also released when the session ends).
pub async fn release(client: &Client, job: Job) -> anyhow::Result<()> {
    client
        .query_one(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&CLASS, &(job as i32)],
        )
        .await
        .context("release the advisory lock")?;
    Ok(())
}

/// "pid 123, application "backupctl archive (host db2, pid 77)", client 10.0.0.5, since …".
async fn holder(client: &Client, job: Job) -> anyhow::Result<String> {
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'),
                    coalesce(a.usename::text, ''), to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid::int8 = $1 AND l.objid::int8 = $2
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&(CLASS as i64), &(job as i64)],
        )
        .await?;
    Ok(match rows.first() {
        None => "the holder just finished or is not visible to this user".into(),
        Some(r) => format!(
            "pid {}, application {:?}, client {}, user {}, connected since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
    })
}

/// Name the session after the job and this host so a blocked run can say who holds the
/// lock, and let the server notice quickly when this client dies mid-statement.
pub async fn tag_session(client: &Client, job: Job) -> anyhow::Result<()> {
    let app = format!(
        "backupctl {} (host {}, pid {})",
        job.name(),
        crate::host::local_hostname(),
        std::process::id()
    );
    client
        .query_one(
            "SELECT set_config('application_name', $1, false),
                    set_config('client_connection_check_interval', '1s', false)",
            &[&app],
        )
        .await
        .context("set application_name")?;
    Ok(())
}

/// This machine's host name, for audit rows and lock holders.
/// A connection for one job in `database`: tagged with the job and host, DateStyle ISO
/// (bounds and cutoffs print and parse the same way everywhere), and — unless this is a
/// dry run, which changes nothing and so may run beside a real run — holding the job's
/// advisory lock.
pub async fn job_session(
    params: &crate::pg::conn::ConnParams,
    database: &str,
    job: Job,
    take_lock: bool,
) -> anyhow::Result<Client> {
    let client = params.with_dbname(database).connect().await?;
    tag_session(&client, job).await?;
    client
        .batch_execute("SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
        .await
        .context("set DateStyle")?;
    if take_lock {
        acquire(&client, job, database, LOCK_WAIT).await?;
    }
    Ok(client)
}

/// How long a run waits for the advisory lock before reporting its holder.
pub const LOCK_WAIT: Duration = Duration::from_secs(15);
