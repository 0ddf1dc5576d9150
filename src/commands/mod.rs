//! One use case per module. `run` loads the config, sets up logging and dispatches.

pub mod archival;
pub mod backup;
pub mod backup_logical;
pub mod backup_physical;
pub mod check;
pub mod check_archive;
pub mod info;
pub mod list;
pub mod partitions;
pub mod restore;
pub mod restore_logical;
pub mod retention;
pub mod status;
pub mod verify;
pub mod wal_fetch;
pub mod wal_fetch_ahead;
pub mod wal_push;
pub mod wal_push_ahead;

use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::config::Config;

/// What every command gets: the loaded config and the global output flags.
pub struct Ctx {
    pub cfg: Config,
    pub json: bool,
}

impl Ctx {
    /// Print `value` as pretty JSON on stdout.
    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // restore_command: any failure but "not archived" must stop recovery, config
    // errors included (see wal_fetch::STOP_RECOVERY_EXIT).
    if let Command::WalFetch(args) = &cli.command {
        let dest = args.dest.clone();
        return wal_fetch::stop_recovery_on_failure(run_command(cli).await, &dest);
    }
    run_command(cli).await
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let wal_command = matches!(cli.command, Command::WalPush(_) | Command::WalFetch(_));
    crate::logging::init(&cfg.log, cli.verbose, cli.quiet, wal_command);
    let ctx = Ctx {
        cfg,
        json: cli.json,
    };
    match cli.command {
        Command::Check(args) => check::run(&ctx, args).await,
        Command::Daemon(args) => crate::daemon::run(&ctx, args).await,
        Command::Backup(args) => backup::run(&ctx, args).await,
        Command::Restore(args) if args.logical.is_some() => restore_logical::run(&ctx, &args).await,
        Command::Restore(args) => restore::run(&ctx, args).await,
        Command::WalPush(args) => wal_push::run(&ctx, args).await,
        Command::WalFetch(args) => wal_fetch::run(&ctx, args).await,
        Command::List => list::run(&ctx).await,
        Command::Info(args) => info::run(&ctx, args).await,
        Command::Verify(args) => verify::run(&ctx, args).await,
        Command::Retention(args) => retention::command(&ctx, args).await,
        Command::Partitions(args) => partitions::main(&ctx, args).await,
        Command::Archive(args) => archival::main(&ctx, args).await,
    }
}
