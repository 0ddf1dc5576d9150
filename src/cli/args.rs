//! Command-line definitions (clap derive). No logic here: `cli/mod.rs` turns them into
//! the operations' requests.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "backupctl",
    version,
    about = "Backup, archival and point-in-time recovery for PostgreSQL",
    long_about = "Backup, archival and point-in-time recovery for PostgreSQL.\n\n\
        Runs as a daemon (scheduled backups, verification, retention, partitions, archival), \
        as PostgreSQL's archive_command/restore_command (wal-push, wal-fetch), and as an \
        operator CLI. Exit codes: 0 success, 1 failure, 2 bad input or refused request, \
        3 another run of the same job holds the lock (with --no-wait); `migrate` also \
        exits with its command's code, or 4 (see `backupctl migrate --help`)."
)]
pub struct Cli {
    /// Configuration file [default: /etc/backupctl/backup.toml, or the embedded default
    /// when that does not exist]
    #[arg(long, global = true, env = "BACKUPCTL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Act on this repository only (its `name` in the config) [default: writes go to
    /// every repository that receives their kind, reads to the first that has what is
    /// needed]
    #[arg(
        long = "repo",
        global = true,
        env = "BACKUPCTL_REPO",
        value_name = "NAME"
    )]
    pub repo: Option<String>,

    /// Print machine-readable JSON on stdout where the command has output
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings and errors only, -qq errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Send no notification for this command (backup, restore, verify, archive, migrate
    /// notify as [notify] says otherwise)
    #[arg(long, global = true)]
    pub no_notify: bool,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scheduled jobs from the config (systemd service)
    Daemon(DaemonArgs),
    /// Take a backup now (also the pre-migration hook)
    Backup(BackupArgs),
    /// Restore a physical backup with point-in-time recovery, or a logical backup
    Restore(RestoreArgs),
    /// Run a schema migration behind a pre-migration backup; restore if it fails
    Migrate(MigrateArgs),
    /// Archive one WAL file (PostgreSQL archive_command: wal-push %p)
    WalPush(WalPushArgs),
    /// Fetch one WAL file (PostgreSQL restore_command: wal-fetch %f %p)
    WalFetch(WalFetchArgs),
    /// List backups and the recoverable window
    List,
    /// Show one backup in detail, or the repository summary
    Info(InfoArgs),
    /// Prove backups restore: test-restore into scratch clusters, check WAL continuity
    Verify(VerifyArgs),
    /// Check configuration, PostgreSQL, archiving and the repository
    Check(CheckArgs),
    /// Delete backups and WAL the retention policy no longer keeps
    Retention(DryRunArgs),
    /// Create the monthly partitions the [[partitions]] policies ask for
    Partitions(DryRunArgs),
    /// Move old rows or partitions into the archive schema per [[archive]] policies
    Archive(ArchiveArgs),
    /// Load the rows of one export of archived data into a table
    RestoreExport(RestoreExportArgs),
}

#[derive(Debug, Args)]
pub struct RestoreExportArgs {
    /// The export's id (`backupctl list` shows them)
    pub id: String,
    /// Table to load the rows into: an existing one with the export's columns, or a new
    /// one (created with the export's columns and primary key); schema.table
    #[arg(long, value_name = "TABLE")]
    pub into: String,
    /// Database [default: the one the export came from]
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Print what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Physical,
    /// A physical backup of what changed since its parent (--parent)
    Incremental,
    Logical,
    Both,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// What to back up
    #[arg(long, value_enum, default_value = "physical")]
    pub kind: KindArg,
    /// Label stored in the manifest (e.g. pre-migration); labelled backups follow
    /// retention.labels.<label>
    #[arg(long)]
    pub label: Option<String>,
    /// Incremental backups: the backup to store the changes since, or `full` for the
    /// newest verified full one (a differential backup) [default: the newest verified
    /// physical backup of this cluster and timeline]
    #[arg(long, value_name = "ID|full")]
    pub parent: Option<String>,
    /// Logical backups: database to dump (repeatable) [default: logical.databases, or
    /// every connectable non-template database]
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,
    /// Test-restore the backup before returning (exit non-zero if it fails)
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Skip the verification that verify.after_backup would run
    #[arg(long)]
    pub no_verify: bool,
    /// Fail at once (exit 3) if a backup of the same kind is running instead of waiting
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Restore into a new database, then swap the names (the failed one is kept)
    Swap,
    /// Drop and recreate the backup's objects in the database, in one transaction
    InPlace,
    /// Restore nothing; print the commands that would
    Keep,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the migration succeeded; its own exit code (128 + \
    signal if killed) when it failed and the database was restored; 4 when it failed and \
    the restore failed too (the database is as the migration left it); 1, 2 or 3 when the \
    backup failed (the migration did not run)."
)]
pub struct MigrateArgs {
    /// The database the migration changes
    #[arg(long, value_name = "NAME")]
    pub database: String,
    /// What to do when the migration fails
    #[arg(long, value_enum, default_value = "swap")]
    pub on_failure: OnFailureArg,
    /// Do not test-restore the pre-migration backup before migrating
    #[arg(long)]
    pub no_verify: bool,
    /// swap: how long to try ending the sessions on the failed database before giving
    /// up (nothing renamed)
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub terminate_timeout: u64,
    /// Fail at once (exit 3) if a logical backup is running instead of waiting
    #[arg(long)]
    pub no_wait: bool,
    /// The migration command and its arguments (after `--`); BACKUPCTL_BACKUP_ID is set
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl From<TargetAction> for crate::recovery::target::TargetAction {
    fn from(a: TargetAction) -> Self {
        match a {
            TargetAction::Promote => Self::Promote,
            TargetAction::Pause => Self::Pause,
            TargetAction::Shutdown => Self::Shutdown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKeyword {
    Immediate,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Physical restore: data directory to restore into (must be empty or absent)
    #[arg(long, value_name = "DIR", required_unless_present = "logical")]
    pub pgdata: Option<PathBuf>,
    /// Recover up to this time: RFC 3339 or 'YYYY-MM-DD HH:MM:SS+TZ' (a zone is required)
    #[arg(long, value_name = "TIME", group = "recovery_target")]
    pub target_time: Option<String>,
    /// Recover up to this WAL location (e.g. 0/3000028)
    #[arg(long, value_name = "LSN", group = "recovery_target")]
    pub target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point; the pre-migration
    /// hook names them after the backup id)
    #[arg(long, value_name = "NAME", group = "recovery_target")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent
    #[arg(long, value_enum, group = "recovery_target")]
    pub target: Option<TargetKeyword>,
    /// Timeline to recover along: a number, or 'latest' [default: latest]
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<String>,
    /// Physical backup to restore [default: the newest one that can reach the target]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// What the server does when it reaches the target
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: TargetAction,
    /// Start PostgreSQL on the restored directory, wait for recovery to finish and
    /// report the timeline and last replayed commit
    #[arg(long)]
    pub start: bool,
    /// This restored copy becomes the cluster's new primary: keep its archive_command,
    /// so the timeline it starts is archived into this repository. Without it the copy
    /// gets archive_mode = off and never writes to the repository it came from
    #[arg(long)]
    pub new_primary: bool,
    /// Port for --start [default: 5432]
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// Relocate a tablespace: OLD=NEW (OLD = original location or tablespace OID)
    #[arg(long = "tablespace-map", value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Logical restore: the logical backup id to restore
    #[arg(long, value_name = "ID", conflicts_with_all = ["pgdata", "recovery_target", "backup", "start", "new_primary"])]
    pub logical: Option<String>,
    /// Logical restore: database to restore into
    #[arg(long, value_name = "NAME", requires = "logical")]
    pub dbname: Option<String>,
    /// Logical restore: which dumped database to take [default: the only one]
    #[arg(long, value_name = "NAME", requires = "logical")]
    pub database: Option<String>,
    /// Logical restore: restore only this table (schema.table; repeatable)
    #[arg(long = "table", value_name = "TABLE", requires = "logical")]
    pub tables: Vec<String>,
    /// Logical restore: create the target database
    #[arg(long, requires = "logical")]
    pub create: bool,
    /// Logical restore: drop existing objects before restoring them
    #[arg(long, requires = "logical")]
    pub clean: bool,
    /// Logical restore with --table: replace the rows of the existing tables in one
    /// transaction (definition untouched, owned sequences set from the backup); refused,
    /// unchanged, when foreign keys would break
    #[arg(long, requires = "tables", conflicts_with_all = ["create", "clean", "jobs"])]
    pub data_only: bool,
    /// Logical restore: restore roles and tablespaces (pg_dumpall --globals-only)
    #[arg(long, requires = "logical")]
    pub globals: bool,
    /// Logical restore: parallel pg_restore jobs
    #[arg(long, requires = "logical")]
    pub jobs: Option<u32>,
    /// Print what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// Path of the WAL file (%p), relative to the current directory (PGDATA)
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// Segments recovery must find (written by `restore`): FIRST..LAST on one timeline;
    /// a missing one stops recovery (exit 126) instead of ending it
    #[arg(long = "expect", value_name = "FIRST..LAST")]
    pub expect: Vec<String>,
    /// Internal: prefetch the segments after NAME into the spool beside DEST, in the
    /// background (wal-fetch starts it itself)
    #[arg(long, hide = true)]
    pub prefetch: bool,
    /// WAL file name (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Backup id [default: repository summary]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id to verify
    #[arg(group = "which")]
    pub id: Option<String>,
    /// Verify the newest backup of each kind
    #[arg(long, group = "which")]
    pub latest: bool,
    /// Verify every backup
    #[arg(long, group = "which")]
    pub all: bool,
    /// Verify backups taken within this duration (e.g. 7d)
    #[arg(long, value_name = "DURATION", group = "which")]
    pub since: Option<String>,
    /// Check WAL continuity from the oldest kept backup to the newest segment
    #[arg(long)]
    pub wal: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Create repo.json for this cluster if the repository is new
    #[arg(long)]
    pub init: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Run every job [schedule] names once, in order (partitions, archive, physical,
    /// logical, verify, retention), then exit: 0 if all succeeded, 1 otherwise
    #[arg(long)]
    pub run_once: bool,
}

#[derive(Debug, Args)]
pub struct DryRunArgs {
    /// Print exactly what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Print exactly what would be done, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: count the rows to move (reads every old row) instead of the
    /// planner's estimate
    #[arg(long, requires = "dry_run")]
    pub exact: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_design_subcommand_exists() {
        let cmd = Cli::command();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for want in [
            "daemon",
            "backup",
            "restore",
            "wal-push",
            "wal-fetch",
            "list",
            "info",
            "verify",
            "check",
            "retention",
            "partitions",
            "archive",
            "migrate",
        ] {
            assert!(names.contains(&want), "missing subcommand {want}");
        }
    }

    #[test]
    fn restore_targets_are_exclusive() {
        let r = Cli::try_parse_from([
            "backupctl",
            "restore",
            "--pgdata",
            "/x",
            "--target-time",
            "2026-01-01 00:00:00+00",
            "--target-lsn",
            "0/1",
        ]);
        assert!(r.is_err());
    }
}
