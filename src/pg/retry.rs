//! Retrying short maintenance transactions that lost a lock race.
//!
//! DDL and archival batches run under `lock_timeout` so they never queue for long behind
//! an application transaction (a waiting ACCESS EXCLUSIVE request blocks everyone behind
//! it). Losing such a race is normal: the transaction rolls back and is retried after a
//! jittered, growing pause. Only lock timeouts, deadlocks and serialization failures are
//! retried; any other error is returned at once.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Attempts per transaction (the first one included).
pub const LOCK_ATTEMPTS: u32 = 6;

/// Whether the error chain holds a lock timeout, deadlock or serialization failure.
pub fn is_lock_conflict(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .is_some_and(|code| {
                *code == SqlState::LOCK_NOT_AVAILABLE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
            })
    })
}

/// Pause before attempt `n + 1` (n ≥ 1): 1 s, 2 s, 4 s, 8 s, 16 s, ±25 %.
pub fn backoff(n: u32) -> Duration {
    let base = 1000u64 << (n.saturating_sub(1)).min(4);
    let jitter = fastrand::u64(0..=base / 2);
    Duration::from_millis(base - base / 4 + jitter)
}

/// Where a transaction takes its locks: the connection, and the relations (qualified,
/// quoted names) whose holders are named when it gives up.
pub struct On<'a> {
    pub client: &'a Client,
    pub relations: Vec<String>,
}

/// Run `op` until it succeeds, fails with something other than a lock conflict, or has
/// lost [`LOCK_ATTEMPTS`] lock races. `what` names the transaction in logs and errors;
/// when it gives up, the sessions holding locks on `on`'s relations are named, with
/// how to end them.
pub async fn with_lock_retries<T, F, Fut>(
    on: Option<On<'_>>,
    what: &str,
    mut op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_lock_conflict(&e) && attempt < LOCK_ATTEMPTS => {
                let pause = backoff(attempt);
                tracing::warn!(attempt, pause = ?pause, "{what}: {e:#}; retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(e) if is_lock_conflict(&e) => {
                let who = match &on {
                    Some(on) => blockers(on).await,
                    None => "find them in pg_stat_activity and pg_locks".into(),
                };
                return Err(e.context(format!(
                    "{what}: still blocked by other sessions after {LOCK_ATTEMPTS} attempts; \
                     {who}; or raise lock_timeout"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The sessions holding locks on `on`'s relations, for a message: who they are (pid,
/// user, application, state, how long their transaction has been open), which lock on
/// what, and the SQL that ends one. Their query text is left out (it may hold data).
async fn blockers(on: &On<'_>) -> String {
    let rows = on
        .client
        .query(
            "SELECT DISTINCT a.pid, coalesce(a.usename::text, '?'), \
                    coalesce(nullif(a.application_name, ''), '-'), coalesce(a.state, '?'), \
                    coalesce(extract(epoch FROM now() - a.xact_start)::int8, 0), \
                    l.mode, l.relation::regclass::text \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid() \
               AND l.relation IN (SELECT to_regclass(r) FROM unnest($1::text[]) r) \
             ORDER BY 1, 7",
            &[&on.relations],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return format!("the sessions holding its locks could not be listed ({e}); find them in pg_stat_activity and pg_locks"),
    };
    if rows.is_empty() {
        return format!(
            "no other session holds a lock on {} any more: run it again",
            on.relations.join(", ")
        );
    }
    let mut pids = vec![];
    let held: Vec<String> = rows
        .iter()
        .map(|r| {
            let pid: i32 = r.get(0);
            if !pids.contains(&pid) {
                pids.push(pid);
            }
            format!(
                "pid {pid} (user {}, application {}, {}, transaction open {} s) holds {} on {}",
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, i64>(4),
                r.get::<_, String>(5),
                r.get::<_, String>(6),
            )
        })
        .collect();
    let end: Vec<String> = pids
        .iter()
        .map(|p| format!("SELECT pg_terminate_backend({p})"))
        .collect();
    format!(
        "blocked by: {}; end them once you know they can go: {}",
        held.join("; "),
        end.join("; ")
    )
}

/// Run `body` inside `BEGIN … COMMIT` on `client`; roll back when it fails. (A shared
/// `&Client` cannot hand out tokio-postgres' `Transaction`, which needs `&mut`.)
pub async fn transaction<'a, T, F, Fut>(client: &'a Client, body: F) -> anyhow::Result<T>
where
    F: FnOnce(&'a Client) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    client.batch_execute("BEGIN").await?;
    match body(client).await {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            // A broken connection rolls back by itself; the body's error is the story.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// `SET LOCAL lock_timeout = '…ms'`, the statement [`set_local_lock_timeout`] runs.
pub fn lock_timeout_sql(timeout: Duration) -> String {
    format!(
        "SET LOCAL lock_timeout = '{}ms'",
        timeout.as_millis().max(1)
    )
}

/// `SET LOCAL lock_timeout` for the current transaction.
pub async fn set_local_lock_timeout(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    client.batch_execute(&lock_timeout_sql(timeout)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for (n, lo, hi) in [
            (1, 750, 1250),
            (2, 1500, 2500),
            (5, 12000, 20000),
            (9, 12000, 20000),
        ] {
            for _ in 0..50 {
                let ms = backoff(n).as_millis() as u64;
                assert!((lo..=hi).contains(&ms), "attempt {n}: {ms} ms");
            }
        }
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let mut calls = 0;
        let r: anyhow::Result<()> = with_lock_retries(None, "test", || {
            calls += 1;
            async { Err(anyhow::anyhow!("syntax error")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
