//! `backupctl migrate --database DB -- COMMAND…`: a schema migration that cannot lose
//! data. The pre-migration backup is taken (logical, label `pre-migration`, restore
//! point, verified unless asked not to) and is durable before COMMAND starts — a failed
//! backup means COMMAND never runs. COMMAND runs with `BACKUPCTL_BACKUP_ID` in its
//! environment and its output passed through. When it exits non-zero or is killed, the
//! database is brought back to the backup's state as `--on-failure` says:
//!
//! - `swap` ([`swap`]): restore into a new database, give it what belongs to the database
//!   itself as it was before the migration ([`dbprops`]), then end the sessions on the
//!   failed database and swap the names in one transaction — or rename nothing;
//! - `in-place` ([`inplace`]): the restore's `--clean` in one transaction, refused
//!   before any change when the migration added objects the backup does not hold;
//! - `keep`: nothing is restored; the report holds the exact commands.
//!
//! The operation returns what happened; the caller decides the exit code from it
//! (COMMAND's own code, or [`crate::error::MIGRATION_RESTORE_FAILED_EXIT`]).

pub mod command;
pub mod dbprops;
pub mod inplace;
pub mod swap;

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::lock::Wait;
use crate::ops::backup::{self, BackupKindSel, BackupRequest};
use crate::pg::conn::ConnParams;

pub use command::CommandOutcome;

/// The label of the backup `migrate` takes.
pub const LABEL: &str = "pre-migration";

/// What to do when COMMAND fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    Swap,
    InPlace,
    Keep,
}

/// `backupctl migrate`, as the operation sees it.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    pub database: String,
    pub on_failure: OnFailure,
    /// Test-restore the backup before COMMAND runs.
    pub verify: bool,
    /// COMMAND and its arguments.
    pub command: Vec<String>,
    /// How long `swap` tries to end the sessions on the failed database.
    pub terminate_timeout: Duration,
    /// How long to wait for a running logical backup.
    pub wait: Wait,
    /// The config file, for the commands the report prints.
    pub config_path: Option<String>,
}

/// What `migrate` did.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    pub database: String,
    pub backup_id: String,
    pub command: CommandOutcome,
    pub on_failure: OnFailure,
    /// `None` when COMMAND succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

/// What happened after COMMAND failed.
#[derive(Debug, Serialize)]
pub struct Recovery {
    /// The database is back in the backup's state.
    pub restored: bool,
    /// One line per step taken (or, for `keep`, per command to run).
    pub steps: Vec<String>,
    /// Where the failed database went (`swap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_database: Option<String>,
    /// Why the database could not be restored; it is as the migration left it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MigrateReport {
    /// COMMAND failed and the database is not back in its pre-migration state.
    pub fn restore_failed(&self) -> bool {
        self.recovery
            .as_ref()
            .is_some_and(|r| !r.restored && self.on_failure != OnFailure::Keep)
    }
}

/// Take the backup, run COMMAND, recover as asked when it fails.
pub async fn run(cfg: &Config, req: &MigrateRequest) -> anyhow::Result<MigrateReport> {
    anyhow::ensure!(
        !req.command.is_empty(),
        crate::error::UserError::new("migrate needs a COMMAND after `--`")
    );
    let ts = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let names = swap::Names::new(&req.database, &ts)?;
    let params = ConnParams::from_config(&cfg.postgres)?;
    let client = params.connect().await?;
    // What belongs to the database itself, as it is before the migration: a restored
    // copy gets exactly this, whatever the migration did to the original.
    let props = dbprops::DbProps::read(&client, &req.database).await?;
    drop(client);

    let taken = backup::run(
        cfg,
        &BackupRequest {
            kind: BackupKindSel::Logical,
            label: Some(LABEL.into()),
            databases: vec![req.database.clone()],
            verify: Some(req.verify),
            wait: req.wait,
            incremental: None,
        },
    )
    .await
    .with_context(|| {
        format!(
            "take the pre-migration backup of database {} (the migration was not run)",
            req.database
        )
    })?;
    let backup_id = taken
        .backups
        .first()
        .map(|b| b.id.clone())
        .context("the backup reported no backup id")?;
    tracing::info!(
        "pre-migration backup {backup_id} of {} is durable; running the migration",
        req.database
    );

    let outcome = command::run(&req.command, &backup_id).await?;
    let mut report = MigrateReport {
        database: req.database.clone(),
        backup_id: backup_id.clone(),
        command: outcome,
        on_failure: req.on_failure,
        recovery: None,
    };
    if report.command.success() {
        return Ok(report);
    }
    tracing::error!(
        "the migration of {} failed ({}); recovering with --on-failure {}",
        req.database,
        report.command.describe(),
        match req.on_failure {
            OnFailure::Swap => "swap",
            OnFailure::InPlace => "in-place",
            OnFailure::Keep => "keep",
        }
    );
    let recovery = match req.on_failure {
        OnFailure::Keep => Recovery {
            restored: false,
            steps: keep_commands(req, &backup_id, &names),
            failed_database: None,
            error: None,
        },
        OnFailure::Swap => {
            let mut steps = Vec::new();
            let r = swap::run(
                cfg,
                &params,
                &backup_id,
                &names,
                &props,
                req.terminate_timeout,
                &mut steps,
            )
            .await;
            finish(r.map(|()| Some(names.failed.clone())), steps)
        }
        OnFailure::InPlace => {
            let mut steps = Vec::new();
            let r = inplace::run(cfg, &params, &backup_id, &req.database, &mut steps).await;
            finish(r.map(|()| None), steps)
        }
    };
    report.recovery = Some(recovery);
    Ok(report)
}

fn finish(r: anyhow::Result<Option<String>>, steps: Vec<String>) -> Recovery {
    match r {
        Ok(failed_database) => Recovery {
            restored: true,
            steps,
            failed_database,
            error: None,
        },
        Err(e) => Recovery {
            restored: false,
            steps,
            failed_database: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// `--on-failure keep`: the commands that do what `swap` would have done.
fn keep_commands(req: &MigrateRequest, id: &str, names: &swap::Names) -> Vec<String> {
    use crate::pg::sql::ident;
    use crate::text::shell_quote;
    let config = req
        .config_path
        .as_deref()
        .map(|c| format!(" --config {}", shell_quote(c)))
        .unwrap_or_default();
    let db = &req.database;
    vec![
        format!(
            "backupctl{config} restore --logical {id} --database {} --dbname {} --create",
            shell_quote(db),
            shell_quote(&names.restored)
        ),
        format!(
            "psql -X -v ON_ERROR_STOP=1 -d postgres -c {}",
            shell_quote(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                ident(db)
            ))
        ),
        format!(
            "psql -X -v ON_ERROR_STOP=1 -d postgres -c {}",
            shell_quote(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
                crate::pg::sql::literal(db)
            ))
        ),
        format!(
            "psql -X -v ON_ERROR_STOP=1 -d postgres -c {}",
            shell_quote(&format!(
                "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT",
                ident(db),
                ident(&names.failed),
                ident(&names.restored),
                ident(db)
            ))
        ),
        format!(
            "or in place: backupctl{config} restore --logical {id} --database {} --dbname {} --clean",
            shell_quote(db),
            shell_quote(db)
        ),
    ]
}
