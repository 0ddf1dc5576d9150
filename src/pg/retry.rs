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

/// Run `op` until it succeeds, fails with something other than a lock conflict, or has
/// lost [`LOCK_ATTEMPTS`] lock races. `what` names the transaction in logs and errors.
pub async fn with_lock_retries<T, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
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
                return Err(e.context(format!(
                    "{what}: still blocked by other sessions after {LOCK_ATTEMPTS} attempts; \
                     find them in pg_stat_activity/pg_locks or raise lock_timeout"
                )))
            }
            Err(e) => return Err(e),
        }
    }
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
        let r: anyhow::Result<()> = with_lock_retries("test", || {
            calls += 1;
            async { Err(anyhow::anyhow!("syntax error")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
