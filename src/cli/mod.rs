//! The top layer: clap definitions ([`args`]), dispatch to the operations, and rendering
//! of what they return (human text in [`render`], or `--json`). Only this module and the
//! daemon print on stdout; only this module knows the command line. Exit codes are
//! decided by `error::classify` from the typed errors the operations return.

pub mod args;
pub mod notify;
pub mod render;

pub use args::*;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::lock::Wait;
use crate::ops;

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
    // errors included (see ops::wal::fetch::stop_recovery_on_failure).
    if let Command::WalFetch(args) = &cli.command {
        if args.prefetch {
            // The background prefetcher: recovery does not wait for it.
            return run_command(cli).await;
        }
        let dest = args.dest.clone();
        return ops::wal::fetch::stop_recovery_on_failure(run_command(cli).await, &dest);
    }
    run_command(cli).await
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(name) = &cli.repo {
        cfg.select_repository(name)?;
    }
    let config_path = cli.config.as_ref().map(|p| p.display().to_string());
    let wal_command = matches!(cli.command, Command::WalPush(_) | Command::WalFetch(_));
    crate::logging::init(&cfg.log, cli.verbose, cli.quiet, wal_command);
    let ctx = Ctx {
        cfg,
        json: cli.json,
    };
    let job = (!cli.no_notify)
        .then(|| notify::CliJob::of(&cli.command))
        .flatten();
    let started = std::time::Instant::now();
    let mut done = notify::Done::default();
    let res = dispatch(&ctx, cli.command, config_path, !cli.no_notify, &mut done).await;
    if let Some(job) = job {
        notify::finished(&ctx.cfg, job, started.elapsed(), &res, done).await;
    }
    res
}

/// Run one command; what a notification tells about it goes into `done`.
async fn dispatch(
    ctx: &Ctx,
    command: Command,
    config_path: Option<String>,
    notify: bool,
    done: &mut notify::Done,
) -> anyhow::Result<()> {
    let cfg = &ctx.cfg;
    match command {
        Command::Check(args) => {
            let r = ops::check::run(cfg, args.init).await?;
            if ctx.json {
                ctx.print_json(&serde_json::json!({ "ok": !r.failed(), "checks": r.lines }))?;
            } else {
                render::check(&r);
            }
            if r.failed() {
                return Err(crate::error::Reported::quiet().into());
            }
            Ok(())
        }
        Command::Daemon(args) => crate::daemon::run(cfg, args.run_once, ctx.json).await,
        Command::Backup(args) => {
            let req = ops::backup::BackupRequest {
                incremental: match (args.kind, args.parent.as_deref()) {
                    (KindArg::Incremental, None) => Some(ops::backup::physical::ParentChoice::Newest),
                    (KindArg::Incremental, Some("full")) => Some(ops::backup::physical::ParentChoice::Full),
                    (KindArg::Incremental, Some(id)) => {
                        Some(ops::backup::physical::ParentChoice::Id(id.to_string()))
                    }
                    (_, Some(_)) => {
                        return Err(crate::user_error!(
                            "--parent names the parent of an incremental backup; use it with --kind incremental"
                        ))
                    }
                    (_, None) => None,
                },
                kind: match args.kind {
                    KindArg::Physical | KindArg::Incremental => ops::backup::BackupKindSel::Physical,
                    KindArg::Logical => ops::backup::BackupKindSel::Logical,
                    KindArg::Both => ops::backup::BackupKindSel::Both,
                },
                label: args.label,
                databases: args.databases,
                verify: if args.verify {
                    Some(true)
                } else if args.no_verify {
                    Some(false)
                } else {
                    None
                },
                wait: if args.no_wait {
                    Wait::No
                } else {
                    Wait::Up(ops::backup::LOCK_WAIT)
                },
            };
            let out = ops::backup::run(cfg, &req).await?;
            done.backup_ids = out.backups.iter().map(|b| b.id.clone()).collect();
            if ctx.json {
                ctx.print_json(&out)?;
            } else {
                for b in &out.backups {
                    println!("{}", b.id);
                }
            }
            Ok(())
        }
        Command::Restore(args) if args.logical.is_some() => {
            let req = ops::restore::logical::LogicalRestoreRequest {
                id: args.logical.unwrap_or_default(),
                dbname: args.dbname,
                database: args.database,
                tables: args.tables,
                create: args.create,
                clean: args.clean,
                data_only: args.data_only,
                globals: args.globals,
                jobs: args.jobs,
                dry_run: args.dry_run,
            };
            done.backup_ids = vec![req.id.clone()];
            for line in ops::restore::logical::run(cfg, &req).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Restore(args) => {
            let req = ops::restore::RestoreRequest {
                pgdata: args.pgdata,
                target_time: args.target_time,
                target_lsn: args.target_lsn,
                target_name: args.target_name,
                target_immediate: args.target.is_some(),
                target_timeline: args.target_timeline,
                backup: args.backup,
                target_action: args.target_action.into(),
                start: args.start,
                new_primary: args.new_primary,
                port: args.port,
                tablespace_map: args.tablespace_map,
                dry_run: args.dry_run,
            };
            let report = ops::restore::run(cfg, &req, &|line| eprintln!("{line}")).await?;
            done.backup_ids = vec![report.backup.clone()];
            if report.dry_run.is_some() {
                render::restore_dry_run(&report);
            } else if ctx.json {
                ctx.print_json(&report)?;
            }
            Ok(())
        }
        Command::Migrate(args) => migrate(ctx, args, config_path, notify).await,
        Command::WalPush(args) => ops::wal::push::run(cfg, args.path).await,
        Command::WalFetch(args) if args.prefetch => {
            ops::wal::fetch::prefetch_in_background(cfg, &args.name, &args.dest).await
        }
        Command::WalFetch(args) => {
            let expected = ops::wal::fetch::Expected::parse(&args.expect)?;
            ops::wal::fetch::run(cfg, args.name, &args.dest, &expected).await
        }
        Command::List => {
            let listing = ops::list::run(cfg).await?;
            if ctx.json {
                ctx.print_json(&listing)
            } else {
                render::list(&listing, &cfg.display_zone());
                Ok(())
            }
        }
        Command::Info(args) => match ops::info::run(cfg, args.id.as_deref()).await? {
            ops::info::Info::Backup(m) if ctx.json => ctx.print_json(&m),
            ops::info::Info::Backup(m) => {
                render::backup(&m, &cfg.display_zone());
                Ok(())
            }
            ops::info::Info::Summary(s) if ctx.json => ctx.print_json(&s),
            ops::info::Info::Summary(s) => {
                render::info_summary(&s, &cfg.display_zone());
                Ok(())
            }
        },
        Command::Verify(args) => {
            let req = ops::verify::VerifyRequest {
                id: args.id,
                latest: args.latest,
                all: args.all,
                since: args.since,
                wal: args.wal,
            };
            let report = ops::verify::run(cfg, &req).await?;
            if ctx.json {
                ctx.print_json(&report)?;
            } else {
                render::verify(&report);
            }
            let mut failures = ops::backup::verification_failures(&report);
            if let Some(w) = &report.wal {
                if !w.gaps.is_empty() {
                    failures.push(format!("WAL continuity: gaps {}", w.gaps.join(", ")));
                }
                failures.extend(w.content.failures.iter().map(|f| f.to_string()));
            }
            if !failures.is_empty() {
                done.cause = Some(failures.join("; "));
            }
            ops::verify::outcome(&report)
        }
        Command::Retention(args) if cfg.several_repositories() => {
            // Each repository applies the policy to what it holds.
            let mut all = Vec::new();
            for r in cfg.all_repositories() {
                let c = cfg.with_repository(&r);
                let report =
                    ops::retention::run(&c, args.dry_run, Wait::Up(ops::retention::LOCK_WAIT))
                        .await
                        .with_context(|| format!("repository {}", r.name))?;
                if !ctx.json {
                    println!("== repository {} ==", r.name);
                    render::retention(&report, &cfg.display_zone());
                }
                all.push(serde_json::json!({ "repository": r.name, "report": report }));
            }
            if ctx.json {
                ctx.print_json(&serde_json::json!({ "repositories": all }))?;
            }
            Ok(())
        }
        Command::Retention(args) => {
            let report =
                ops::retention::run(cfg, args.dry_run, Wait::Up(ops::retention::LOCK_WAIT)).await?;
            if ctx.json {
                ctx.print_json(&report)
            } else {
                render::retention(&report, &cfg.display_zone());
                Ok(())
            }
        }
        Command::Partitions(args) => {
            let summary = ops::partitions::run(cfg, args.dry_run, Wait::No).await?;
            if ctx.json {
                ctx.print_json(&summary)?;
            } else {
                render::partitions(&summary);
            }
            summary.outcome()
        }
        Command::Archive(args) => {
            let opts = ops::archival::Options {
                dry_run: args.dry_run,
                exact: args.exact,
            };
            let summary = ops::archival::run_with(cfg, opts, Wait::No).await?;
            if ctx.json {
                ctx.print_json(&summary)?;
            } else {
                render::archive(&summary, &cfg.display_zone());
            }
            let causes: Vec<String> = summary
                .tables
                .iter()
                .filter_map(|t| Some(format!("{}: {}", t.table, t.error.as_ref()?)))
                .collect();
            if !causes.is_empty() {
                done.cause = Some(causes.join("; "));
            }
            summary.outcome()
        }
        Command::RestoreExport(args) => {
            let req = ops::export::RestoreExport {
                id: args.id,
                into: args.into,
                database: args.database,
                dry_run: args.dry_run,
            };
            let r = ops::export::restore(cfg, &req).await?;
            if ctx.json {
                return ctx.print_json(&r);
            }
            if r.dry_run {
                println!(
                    "would load export {} into {} in database {}:",
                    r.id, r.table, r.database
                );
                for stmt in &r.plan {
                    println!("  {stmt}");
                }
                println!("dry run: nothing was changed");
            } else {
                println!(
                    "loaded {} row(s) of export {} into {}{} in database {}; count and fingerprint match the export's manifest",
                    r.rows,
                    r.id,
                    r.table,
                    if r.created { " (created)" } else { "" },
                    r.database
                );
            }
            Ok(())
        }
    }
}

/// `backupctl migrate`: the operation, its report on stderr (stdout carries COMMAND's
/// output) or as JSON, an alert when anything failed, and the exit code the report
/// calls for.
async fn migrate(
    ctx: &Ctx,
    args: MigrateArgs,
    config_path: Option<String>,
    notify: bool,
) -> anyhow::Result<()> {
    use crate::notify::{Alert, Event, Outcome};
    use ops::migrate::{MigrateRequest, OnFailure};
    let cfg = &ctx.cfg;
    let started = std::time::Instant::now();
    // The outcome is recorded (for "recovery") and sent unless --no-notify.
    let send = |mut alert: Alert, ok: bool| async move {
        let outcome = crate::notify::job_outcome(cfg, &["migrate"], ok);
        if !notify {
            return;
        }
        alert.result = outcome;
        alert.job = Some("migrate".into());
        alert.duration_seconds = Some((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        if ok {
            alert.event = if outcome == Outcome::Recovery {
                Event::JobRecovered
            } else {
                Event::JobSucceeded
            };
            alert.severity = "info";
        } else {
            alert.next_action = Some(
                "read the migration's report on stderr, fix the migration, then run `backupctl check`"
                    .into(),
            );
        }
        notify::send(cfg, alert).await;
    };
    let req = MigrateRequest {
        database: args.database,
        on_failure: match args.on_failure {
            OnFailureArg::Swap => OnFailure::Swap,
            OnFailureArg::InPlace => OnFailure::InPlace,
            OnFailureArg::Keep => OnFailure::Keep,
        },
        verify: !args.no_verify,
        command: args.command,
        terminate_timeout: std::time::Duration::from_secs(args.terminate_timeout),
        wait: if args.no_wait {
            Wait::No
        } else {
            Wait::Up(ops::backup::LOCK_WAIT)
        },
        config_path,
    };
    let report = match ops::migrate::run(cfg, &req).await {
        Ok(r) => r,
        Err(e) => {
            let mut alert = Alert::new(
                cfg,
                Event::MigrationFailed,
                format!(
                    "pre-migration backup of database {} failed; the migration did not run",
                    req.database
                ),
            );
            alert.error = Some(format!("{e:#}"));
            send(alert, false).await;
            return Err(e);
        }
    };
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        render::migrate(&report);
    }
    if report.command.success() {
        let mut alert = Alert::new(
            cfg,
            Event::JobSucceeded,
            format!(
                "the migration of database {} succeeded; backup {} holds the state before it",
                report.database, report.backup_id
            ),
        );
        alert.backup_ids = vec![report.backup_id.clone()];
        send(alert, true).await;
        return Ok(());
    }
    let (code, summary) = if report.restore_failed() {
        (
            crate::error::MIGRATION_RESTORE_FAILED_EXIT,
            format!(
                "the migration of database {} failed ({}) and restoring backup {} FAILED: the database is as the migration left it",
                report.database,
                report.command.describe(),
                report.backup_id
            ),
        )
    } else if report.on_failure == OnFailure::Keep {
        (
            report.command.shell_code(),
            format!(
                "the migration of database {} failed ({}); nothing was restored (--on-failure keep): backup {} holds the state before it",
                report.database,
                report.command.describe(),
                report.backup_id
            ),
        )
    } else {
        (
            report.command.shell_code(),
            format!(
                "the migration of database {} failed ({}); the database was restored from backup {}",
                report.database,
                report.command.describe(),
                report.backup_id
            ),
        )
    };
    let mut alert = Alert::new(cfg, Event::MigrationFailed, summary.clone());
    alert.backup_ids = vec![report.backup_id.clone()];
    alert.error = report.recovery.as_ref().and_then(|r| r.error.clone());
    send(alert, false).await;
    Err(crate::error::MigrationFailed {
        code,
        message: summary,
    }
    .into())
}
