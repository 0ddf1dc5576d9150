//! `backupctl check`: report, line by line, what works and what does not — config,
//! repository access, PostgreSQL connection, binaries, archiving settings — each failure
//! with the fix. Exit 1 if anything failed. `--init` creates `repo.json` for this cluster.

use serde::Serialize;

use crate::cli::CheckArgs;
use crate::commands::Ctx;
use crate::pg::bin::PgBin;
use crate::pg::conn::{ConnParams, ServerInfo};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, PutOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Line {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn add(
        &mut self,
        check: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.lines.push(Line {
            check,
            status,
            detail: detail.into(),
            fix,
        });
    }
    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Ok, detail, None);
    }
    fn fail(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Fail, detail, Some(fix.into()));
    }
    fn warn(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Warn, detail, Some(fix.into()));
    }
}

pub async fn run(ctx: &Ctx, args: CheckArgs) -> anyhow::Result<()> {
    let cfg = &ctx.cfg;
    let mut r = Report::default();
    r.ok("config", format!("valid ({})", cfg.origin()));

    // Repository: write, read back, delete a probe object.
    let repo = match repo::open(cfg).await {
        Ok(repo) => Some(repo),
        Err(e) => {
            r.fail(
                "repository",
                format!("{e:#}"),
                "fix [repository] in the config",
            );
            None
        }
    };
    let mut identity = None;
    if let Some(repo) = &repo {
        let key = format!("check/probe-{}-{}", std::process::id(), fastrand::u32(..));
        let payload = b"backupctl check probe".to_vec();
        let probe = async {
            repo.put_bytes(&key, payload.clone(), PutOptions::default())
                .await?;
            let back = repo.get_bytes(&key).await?;
            repo.delete(&key).await?;
            anyhow::ensure!(back == payload, "read back different bytes than written");
            anyhow::Ok(())
        };
        match probe.await {
            Ok(()) => r.ok("repository", format!("{} is readable and writable", repo.describe())),
            Err(e) => r.fail(
                "repository",
                format!("{}: {e:#}", repo.describe()),
                "make the repository writable by this user (local: directory permissions; S3: bucket, endpoint and credentials)",
            ),
        }
        match RepoIdentity::load(repo.as_ref()).await {
            Ok(Some(id)) => {
                r.ok(
                    "repository identity",
                    format!(
                        "belongs to system identifier {} (PostgreSQL {})",
                        id.system_identifier, id.pg_major
                    ),
                );
                identity = Some(id);
            }
            Ok(None) if !args.init => r.warn(
                "repository identity",
                "repo.json is missing: the repository is not initialised",
                "run `backupctl check --init` (or the first wal-push/backup creates it)",
            ),
            Ok(None) => {}
            Err(e) => r.fail(
                "repository identity",
                format!("{e:#}"),
                "repair or remove repo.json",
            ),
        }
    }

    // PostgreSQL.
    let params = ConnParams::from_config(&cfg.postgres);
    let server = match &params {
        Err(e) => {
            r.fail("postgres", format!("{e:#}"), "fix [postgres] in the config");
            None
        }
        Ok(p) => match p.connect().await {
            Err(e) => {
                r.fail(
                    "postgres",
                    format!("{e:#}"),
                    "start PostgreSQL or set [postgres] host/port/user (or PGHOST/PGPORT/PGUSER)",
                );
                None
            }
            Ok(client) => match ServerInfo::query(&client).await {
                Err(e) => {
                    r.fail(
                        "postgres",
                        format!("{e:#}"),
                        "connect as a superuser (postgres.user)",
                    );
                    None
                }
                Ok(info) => {
                    r.ok(
                        "postgres",
                        format!(
                            "PostgreSQL {} at {}, system identifier {}{}",
                            info.version,
                            p.describe(),
                            info.system_identifier,
                            if info.in_recovery {
                                " (in recovery)"
                            } else {
                                ""
                            }
                        ),
                    );
                    check_privileges(&client, &mut r).await;
                    check_archiving(&client, cfg, &mut r).await;
                    Some(info)
                }
            },
        },
    };

    // Identity vs. server; --init.
    if let (Some(repo), Some(info)) = (&repo, &server) {
        match (&identity, args.init) {
            (Some(id), _) => {
                if id.system_identifier() != info.system_identifier {
                    r.fail(
                        "repository identity",
                        format!(
                            "repository belongs to system identifier {}, this server is {}",
                            id.system_identifier, info.system_identifier
                        ),
                        "give this cluster its own repository.cluster name",
                    );
                }
            }
            (None, true) => match RepoIdentity::ensure(
                repo.as_ref(),
                info.system_identifier,
                info.major(),
                info.wal_segment_size,
            )
            .await
            {
                Ok(_) => r.ok(
                    "repository identity",
                    format!(
                        "initialised for system identifier {}",
                        info.system_identifier
                    ),
                ),
                Err(e) => r.fail(
                    "repository identity",
                    format!("{e:#}"),
                    "check repository permissions",
                ),
            },
            (None, false) => {}
        }
    } else if args.init {
        r.fail(
            "repository identity",
            "cannot initialise without both the repository and PostgreSQL reachable",
            "fix the failures above, then rerun `backupctl check --init`",
        );
    }

    // Server binaries.
    let want = server.as_ref().map(ServerInfo::major);
    match PgBin::discover(cfg.postgres.bin_dir.as_deref(), want) {
        Ok(b) => r.ok(
            "binaries",
            format!("PostgreSQL {} binaries in {}", b.major, b.dir.display()),
        ),
        Err(e) => r.fail("binaries", format!("{e:#}"), "set postgres.bin_dir"),
    }

    // Data directory (physical backups read it directly).
    let pgdata = cfg
        .postgres
        .pgdata
        .clone()
        .or_else(|| server.as_ref().map(|s| s.data_directory.clone().into()));
    match pgdata {
        Some(dir) => match std::fs::metadata(dir.join("PG_VERSION")) {
            Ok(_) => r.ok("pgdata", format!("{} is readable", dir.display())),
            Err(e) => r.warn(
                "pgdata",
                format!("{}: {e}", dir.display()),
                "physical backups must run on the database host as a user that can read PGDATA (usually postgres)",
            ),
        },
        None => r.warn(
            "pgdata",
            "unknown (PostgreSQL unreachable and postgres.pgdata unset)",
            "set postgres.pgdata",
        ),
    }

    let failed = r.lines.iter().any(|l| l.status == Status::Fail);
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "ok": !failed, "checks": r.lines }))?;
    } else {
        for l in &r.lines {
            let status = match l.status {
                Status::Ok => "OK  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{status} {:<20} {}", l.check, l.detail);
            if let Some(fix) = &l.fix {
                println!("     {:<20} fix: {fix}", "");
            }
        }
    }
    if failed {
        return Err(crate::error::Exit::quiet(1).into());
    }
    Ok(())
}

async fn check_privileges(client: &tokio_postgres::Client, r: &mut Report) {
    let row = client
        .query_one(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let (sup, repl): (bool, bool) = (row.get(0), row.get(1));
            if sup {
                r.ok("privileges", "superuser");
            } else {
                r.warn(
                    "privileges",
                    format!("not a superuser (replication: {repl})"),
                    "connect as a superuser, or grant pg_read_all_data, pg_monitor and EXECUTE on pg_backup_start/pg_backup_stop/pg_switch_wal/pg_create_restore_point",
                );
            }
        }
        Err(e) => r.fail("privileges", format!("{e:#}"), "connect as a superuser"),
    }
}

async fn check_archiving(
    client: &tokio_postgres::Client,
    cfg: &crate::config::Config,
    r: &mut Report,
) {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command')",
            &[],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            r.fail("archiving", format!("{e:#}"), "connect as a superuser");
            return;
        }
    };
    let (level, mode, command): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let config_arg = cfg
        .config_arg()
        .map(|p| format!("--config {} ", p.display()))
        .unwrap_or_default();
    let want = format!("backupctl {config_arg}wal-push %p");
    if level == "minimal" {
        r.fail(
            "wal_level",
            "minimal: WAL cannot be archived",
            "ALTER SYSTEM SET wal_level = 'replica'; then restart PostgreSQL",
        );
    } else {
        r.ok("wal_level", level);
    }
    if mode == "off" {
        r.fail(
            "archive_mode",
            "off: no WAL is archived, point-in-time recovery is impossible",
            "ALTER SYSTEM SET archive_mode = 'on'; then restart PostgreSQL",
        );
    } else {
        r.ok("archive_mode", mode);
    }
    if command.contains("wal-push") && command.contains("backupctl") {
        if cfg
            .config_arg()
            .is_some_and(|p| !command.contains(&p.display().to_string()))
        {
            r.warn(
                "archive_command",
                format!("{command:?} does not use this config file"),
                format!("ALTER SYSTEM SET archive_command = '{want}'; SELECT pg_reload_conf();"),
            );
        } else {
            r.ok("archive_command", command);
        }
    } else {
        r.fail(
            "archive_command",
            format!("{command:?} does not archive with backupctl"),
            format!("ALTER SYSTEM SET archive_command = '{want}'; SELECT pg_reload_conf();"),
        );
    }
}
