//! `--on-failure swap`: the backup is restored into a new database next to the failed
//! one, which is untouched until the copy is complete and has the original's database
//! properties. Only then are the failed database's sessions ended (new connections
//! refused first); if they are not all gone within the timeout, connections are allowed
//! again and nothing is renamed. The two renames run in one transaction: the database's
//! name always belongs to exactly one of them.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use super::dbprops::DbProps;
use crate::config::Config;
use crate::ops::restore::logical::{self, LogicalRestoreRequest};
use crate::pg::conn::ConnParams;
use crate::pg::sql::ident;

/// PostgreSQL's limit on a database name, in bytes.
const MAX_NAME: usize = 63;

/// The names `swap` uses.
#[derive(Debug, Clone)]
pub struct Names {
    pub database: String,
    /// Where the backup is restored before the swap.
    pub restored: String,
    /// What the failed database is renamed to: `DB_failed_<timestamp>`.
    pub failed: String,
}

impl Names {
    pub fn new(db: &str, ts: &str) -> anyhow::Result<Names> {
        if db.is_empty() {
            return Err(crate::user_error!("--database needs a database name"));
        }
        let with = |suffix: &str| {
            // Keep the suffix whole; shorten the name before it if needed.
            let mut head = db.to_string();
            while head.len() + suffix.len() > MAX_NAME {
                head.pop();
            }
            format!("{head}{suffix}")
        };
        Ok(Names {
            database: db.to_string(),
            restored: with(&format!("_restored_{ts}")),
            failed: with(&format!("_failed_{ts}")),
        })
    }
}

/// A database to stay connected to while renaming `db` (never `db` itself).
pub fn control_params(params: &ConnParams, cfg: &Config, db: &str) -> ConnParams {
    let configured = cfg.postgres.dbname.as_deref().unwrap_or("postgres");
    let other = if configured != db {
        configured
    } else if db != "postgres" {
        "postgres"
    } else {
        "template1"
    };
    params.with_dbname(other)
}

pub async fn run(
    cfg: &Config,
    params: &ConnParams,
    backup_id: &str,
    names: &Names,
    props: &DbProps,
    terminate_timeout: Duration,
    steps: &mut Vec<String>,
) -> anyhow::Result<()> {
    let db = &names.database;
    let lines = logical::run(
        cfg,
        &LogicalRestoreRequest {
            id: backup_id.to_string(),
            dbname: Some(names.restored.clone()),
            database: Some(db.clone()),
            create: true,
            ..Default::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "restore backup {backup_id} into a new database {} (database {db} is as the migration left it)",
            names.restored
        )
    })?;
    steps.extend(lines);
    let control = control_params(params, cfg, db);
    let client = control.connect().await?;
    let left = || {
        format!(
            "nothing was renamed: database {db} is as the migration left it, the restored copy is database {}",
            names.restored
        )
    };
    props
        .apply(&client, &names.restored)
        .await
        .with_context(left)?;
    steps.push(format!(
        "gave {} the owner, privileges, settings, connection limit, comment and tablespace {db} had before the migration",
        names.restored
    ));

    let allowed: bool = client
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[db],
        )
        .await
        .with_context(|| format!("read whether database {db} accepts connections"))?
        .get(0);
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            ident(db)
        ))
        .await
        .with_context(|| format!("refuse new connections to database {db}"))?;
    if let Err(e) = end_sessions(&client, db, terminate_timeout).await {
        let reopen = client
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
                ident(db)
            ))
            .await;
        let e = e.context(left());
        return Err(match reopen {
            Ok(()) => e,
            Err(re) => e.context(format!(
                "and database {db} could not be opened to connections again ({re}): run ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                ident(db)
            )),
        });
    }
    client
        .batch_execute(&format!(
            "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT",
            ident(db),
            ident(&names.failed),
            ident(&names.restored),
            ident(db)
        ))
        .await
        .with_context(|| format!("swap the names of databases {db} and {}", names.restored))
        .with_context(left)?;
    steps.push(format!(
        "renamed the failed database {db} to {} and the restored copy {} to {db}",
        names.failed, names.restored
    ));
    // The failed database stays around for inspection.
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
            ident(&names.failed)
        ))
        .await
        .with_context(|| format!("allow connections to {} again", names.failed))?;
    Ok(())
}

/// End every session on `db` (new ones are already refused) and wait until they are
/// gone, for at most `timeout`.
async fn end_sessions(client: &Client, db: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = client
            .query(
                "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''),
                        pg_terminate_backend(pid)
                 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .with_context(|| format!("end the sessions on database {db}"))?;
        if rows.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let who: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "pid {} (user {:?}, application {:?})",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2)
                    )
                })
                .collect();
            return Err(anyhow::anyhow!(
                "{} sessions on database {db} could not be ended within {timeout:?}: {}; the user backupctl connects as needs to be a superuser or have pg_signal_backend",
                rows.len(),
                who.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgres_limit() {
        let n = Names::new("app", "20261203T110538Z").unwrap();
        assert_eq!(n.failed, "app_failed_20261203T110538Z");
        assert_eq!(n.restored, "app_restored_20261203T110538Z");
        let long = "x".repeat(63);
        let n = Names::new(&long, "20261203T110538Z").unwrap();
        assert_eq!(n.restored.len(), 63);
        assert!(n.failed.ends_with("_failed_20261203T110538Z"));
        // Multi-byte names are cut at a character boundary.
        let n = Names::new(&"é".repeat(40), "20261203T110538Z").unwrap();
        assert!(n.restored.len() <= 63);
    }
}
