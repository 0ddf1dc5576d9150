//! `backupctl check`: report, line by line, what works and what does not — config,
//! repository access, backup manifests (one that cannot be used is named), PostgreSQL
//! connection, binaries, archiving settings — each failure with the fix. The command
//! fails if anything failed. `--init` creates `repo.json` for this cluster.

pub mod archive;

use serde::Serialize;

use crate::config::Config;
use crate::pg::bin::PgBin;
use crate::pg::conn::{ConnParams, ServerInfo};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, PutOptions, RepositoryExt};

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
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.lines.iter().any(|l| l.status == Status::Fail)
    }

    pub fn add(
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
    pub fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Ok, detail, None);
    }
    pub fn fail(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Fail, detail, Some(fix.into()));
    }
    pub fn warn(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Status::Warn, detail, Some(fix.into()));
    }
}

/// The "encryption" line: what the repository's `repo.json` says (the keys themselves
/// were checked against it when the repository was opened).
fn encryption_line(id: &RepoIdentity, r: &mut Report) {
    match &id.encryption {
        Some(info) => r.ok(
            "encryption",
            format!(
                "on ({}); new objects use key {}{}",
                info.cipher,
                info.key_ids.last().map(String::as_str).unwrap_or("?"),
                match info.key_ids.len() {
                    1 => String::new(),
                    n => format!(", {} earlier key(s) recorded", n - 1),
                }
            ),
        ),
        None => r.ok(
            "encryption",
            "off: objects are stored in plaintext (encryption is chosen for a new repository, see docs/security.md)",
        ),
    }
}

/// Run every check; `init` creates `repo.json` for this cluster when the repository is
/// new. Failures are lines of the report, not errors.
pub async fn run(cfg: &Config, init: bool) -> anyhow::Result<Report> {
    let mut r = Report::default();
    r.ok("config", format!("valid ({})", cfg.origin()));

    // Repository: write, read back, delete a probe object.
    let opened = match repo::require_existing(cfg) {
        Ok(()) => repo::open(cfg).await,
        Err(e) => Err(e),
    };
    let repo = match opened {
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
    let mut repo_writable = false;
    if let Some(repo) = &repo {
        match probe(repo.as_ref()).await {
            Ok(()) => {
                repo_writable = true;
                r.ok("repository", format!("{} is readable and writable", repo.describe()))
            }
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
                        id.system_identifier,
                        if id.pg_major == 0 {
                            "unknown".to_string()
                        } else {
                            id.pg_major.to_string()
                        }
                    ),
                );
                encryption_line(&id, &mut r);
                identity = Some(id);
            }
            Ok(None) if !init => r.warn(
                "repository identity",
                "repo.json is missing: the repository is not initialised",
                "run `backupctl check --init` (or the first wal-push/backup creates it)",
            ),
            Ok(None) => {}
            Err(e) => {
                let at = format!("{}/{}", repo.describe(), crate::repo::layout::REPO_JSON);
                // Only a file that does not parse may be removed: removing one that could
                // not be read (network, permissions) drops the guard against mixing
                // clusters in one repository.
                if is_parse_error(&e) {
                    r.fail(
                        "repository identity",
                        format!("{e:#}"),
                        format!("repair {at} (or remove it and run `backupctl check --init` on the cluster it belongs to)"),
                    )
                } else {
                    r.fail(
                        "repository identity",
                        format!("cannot read {at}: {e:#}"),
                        format!("make {at} readable by this user (local: permissions; S3: endpoint, credentials, bucket policy); do not remove it: it keeps other clusters' WAL out of this repository"),
                    )
                }
            }
        }
        if identity.is_none() && cfg.encryption.enabled() {
            r.ok(
                "encryption",
                "on: the repository is initialised encrypted with the configured key",
            );
        }
        check_manifests(repo.as_ref(), &mut r).await;
        check_leftovers(repo.as_ref(), &mut r).await;
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
                let text = format!("{e:#}");
                match crate::pg::tls::explain(&text, &p.tls, &p.host) {
                    Some(fix) => {
                        let detail = text.strip_suffix(&format!("; {fix}")).unwrap_or(&text);
                        r.fail("postgres", detail, fix)
                    }
                    None => r.fail("postgres", text, connect_fix(&e)),
                }
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
                            "PostgreSQL {} at {}, system identifier {}{}; {}",
                            info.version,
                            p.describe(),
                            info.system_identifier,
                            if info.in_recovery {
                                " (in recovery)"
                            } else {
                                ""
                            },
                            tls_in_use(&client, p).await
                        ),
                    );
                    check_privileges(&client, &mut r).await;
                    check_archiving(&client, cfg, &mut r).await;
                    if info.in_recovery {
                        check_standby(&client, cfg, &info, &mut r).await;
                    }
                    Some((info, client))
                }
            },
        },
    };
    let (server, client) = match server {
        Some((info, client)) => (Some(info), Some(client)),
        None => (None, None),
    };

    // Identity vs. server; --init.
    if let (Some(repo), Some(info)) = (&repo, &server) {
        match (&identity, init) {
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
                cfg.encryption.enabled(),
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
    } else if init {
        r.fail(
            "repository identity",
            "cannot initialise without both the repository and PostgreSQL reachable",
            "fix the failures above, then rerun `backupctl check --init`",
        );
    }

    // The end-to-end proof: a segment closed now reaches the repository.
    match (&repo, &client, &server) {
        (Some(repo), Some(client), Some(info)) if repo_writable => {
            if info.in_recovery {
                r.warn(
                    "wal archiving",
                    "not tested: the server is a standby (pg_switch_wal() runs on the primary)",
                    "run `backupctl check` against the primary",
                );
            } else if r.lines.iter().any(|l| l.status == Status::Fail) {
                r.warn(
                    "wal archiving",
                    "not tested (pg_switch_wal) because of the failures above",
                    "fix them and run `backupctl check` again",
                );
            } else {
                archive::probe(&mut r, client, repo, cfg.check.timeout).await;
            }
        }
        _ => {}
    }
    drop(client);

    check_local_state(cfg, &mut r);

    // Binaries: client programs for logical backups and restores, server programs for
    // test restores and `restore --start`.
    let want = server.as_ref().map(ServerInfo::major);
    match PgBin::for_config(&cfg.postgres, want) {
        Ok(b) => {
            r.ok("binaries", b.describe());
            if let Some(problem) = crate::pg::bin::restore_incompatibility(b.client_major, b.major) {
                r.warn(
                    "logical restores",
                    problem,
                    "physical backups are not affected; only logical ones need other client programs",
                );
            }
        }
        Err(e) => match PgBin::clients(&cfg.postgres, want) {
            Ok(c) => r.fail(
                "binaries",
                format!(
                    "client programs: PostgreSQL {} in {}, enough for logical backups and \
                     restores; but {e:#}",
                    c.client_major,
                    c.client_dir.display()
                ),
                "test restores (verify) and restore --start need the server programs \
                 (initdb, pg_ctl, postgres) of the server's version: install them and set \
                 postgres.bin_dir",
            ),
            Err(_) => r.fail(
                "binaries",
                format!("{e:#}"),
                "set postgres.bin_dir (and postgres.client_bin_dir when the client programs live elsewhere)",
            ),
        },
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
    if cfg.several_repositories() {
        other_repositories(cfg, identity.as_ref(), &mut r).await;
    }

    Ok(r)
}

/// Write a probe object to `repo`, read it back and delete it.
async fn probe(repo: &dyn crate::repo::Repository) -> anyhow::Result<()> {
    let key = format!("check/probe-{}-{}", std::process::id(), fastrand::u32(..));
    let payload = b"backupctl check probe".to_vec();
    repo.put_bytes(&key, payload.clone(), PutOptions::default())
        .await?;
    let back = repo.get_bytes(&key).await?;
    repo.delete(&key).await?;
    anyhow::ensure!(back == payload, "read back different bytes than written");
    Ok(())
}

/// With several repositories: each one besides the first is probed like it (write, read
/// back, delete) and must belong to the same cluster; each with `required = false`
/// that receives WAL shows its backlog.
async fn other_repositories(cfg: &Config, first: Option<&RepoIdentity>, r: &mut Report) {
    for rc in &cfg.repositories.0 {
        let c = cfg.with_repository(rc);
        let what = format!(
            "repository {} ({}, receives {})",
            rc.name,
            if rc.required {
                "required"
            } else {
                "required = false"
            },
            rc.kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if rc.name != cfg.repository.name {
            let probed = async {
                let repo = repo::open(&c).await?;
                probe(repo.as_ref()).await?;
                let id = RepoIdentity::load(repo.as_ref()).await?;
                anyhow::Ok((repo.describe(), id))
            };
            match probed.await {
                Ok((at, id)) => match (first, id) {
                    (Some(f), Some(id)) if f.system_identifier() != id.system_identifier() => r.fail(
                        "repositories",
                        format!("{what} at {at} belongs to cluster {}, the first repository to {}", id.system_identifier(), f.system_identifier()),
                        "point each repository of this config at this cluster's data (another prefix or path)",
                    ),
                    (_, None) => r.ok("repositories", format!("{what} at {at} is readable and writable; new (repo.json is written by its first WAL or backup)")),
                    _ => r.ok("repositories", format!("{what} at {at} is readable and writable")),
                },
                Err(e) if rc.required => r.fail(
                    "repositories",
                    format!("{what}: {e:#}"),
                    "make it reachable and writable, or set required = false if archiving must go on without it",
                ),
                Err(e) => r.warn(
                    "repositories",
                    format!("{what}: {e:#}"),
                    "WAL for it is queued in state_dir and catches up once it is reachable",
                ),
            }
        }
        let b = crate::ops::wal::backlog::Backlog::of(&c).status(&rc.name);
        let queued = b.files > 0 || !b.lost.is_empty();
        if (!rc.required || queued) && rc.kinds.contains(&crate::config::StoredKind::Wal) {
            if !b.lost.is_empty() {
                r.fail(
                    "wal backlog",
                    format!("repository {}: {} WAL file(s) could not be caught up (gone from pg_wal and every other repository): {}", rc.name, b.lost.len(), b.lost.join(", ")),
                    "take a backup so that recovery from this repository no longer needs them, then remove the entries under state_dir/wal-backlog/*/lost",
                );
            } else if b.files > 0 {
                r.warn(
                    "wal backlog",
                    format!(
                        "repository {}: {} WAL file(s) waiting, oldest {}{}",
                        rc.name,
                        b.files,
                        b.oldest.as_deref().unwrap_or("?"),
                        b.paused_until
                            .map(|t| format!("; next try after {t}"))
                            .unwrap_or_default()
                    ),
                    "they catch up with the next archived segments once the repository answers",
                );
            } else {
                r.ok(
                    "wal backlog",
                    format!("repository {}: nothing waiting", rc.name),
                );
            }
        }
    }
}

/// Whether a `repo.json` error is about its content (JSON), not about reaching it.
fn is_parse_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<serde_json::Error>().is_some())
}

/// What this connection's TLS turned out to be: the server's view (pg_stat_ssl) and
/// what the settings verify.
async fn tls_in_use(client: &tokio_postgres::Client, p: &ConnParams) -> String {
    let row = client
        .query_opt(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await;
    let settings = p.tls.describe(&p.host);
    match row {
        Ok(Some(row)) if row.get::<_, bool>(0) => format!(
            "TLS {} ({settings})",
            row.get::<_, Option<String>>(1).unwrap_or_default()
        ),
        Ok(Some(_)) => format!(
            "not encrypted: the server offered no TLS (sslmode={})",
            p.tls.mode.as_str()
        ),
        _ => settings,
    }
}

/// The fix for a failed connection: authentication failures are about the password
/// (or pg_hba.conf), not about where the server is.
fn connect_fix(e: &anyhow::Error) -> &'static str {
    use tokio_postgres::error::SqlState;
    let pg = e
        .chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>());
    let code = pg.and_then(|p| p.as_db_error()).map(|d| d.code().clone());
    let text = format!("{e:#}");
    if code == Some(SqlState::INVALID_PASSWORD)
        || text.contains("password missing")
        || text.contains("password authentication failed")
    {
        "set the right password for postgres.user: postgres.password_file (a file holding only the password) or PGPASSWORD in the environment; or allow this user in pg_hba.conf"
    } else if code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        "allow this user and host in pg_hba.conf, or connect as another user (postgres.user / PGUSER)"
    } else {
        "start PostgreSQL or set [postgres] host/port/user (or PGHOST/PGPORT/PGUSER)"
    }
}

/// Every manifest must be usable: one that is not is skipped by restores and kept by
/// retention, and someone has to repair or remove it.
async fn check_manifests(repo: &dyn crate::repo::Repository, r: &mut Report) {
    match crate::manifest::Catalog::load(repo).await {
        Ok(cat) if cat.unreadable.is_empty() => r.ok(
            "backup manifests",
            format!(
                "{} complete backup(s), every manifest readable",
                cat.complete.len()
            ),
        ),
        Ok(cat) => {
            for u in &cat.unreadable {
                r.fail("backup manifests", u.reason.clone(), u.fix.clone());
            }
        }
        Err(e) => r.fail(
            "backup manifests",
            format!("{e:#}"),
            "make the repository readable by this user",
        ),
    }
}

/// Hidden leftovers of killed uploads take space no listing shows: say how much.
async fn check_leftovers(repo: &dyn crate::repo::Repository, r: &mut Report) {
    match crate::repo::leftover::summary(repo).await {
        Ok(s) if s.count == 0 => r.ok("unfinished uploads", "none"),
        Ok(s) => r.warn(
            "unfinished uploads",
            format!(
                "{} left by killed uploads ({}), {} of them by processes of this host that are gone",
                s.count,
                crate::text::human_bytes(s.bytes),
                s.of_dead_writers_here
            ),
            "the next backup, wal-push or retention on the writing host removes those of processes that are gone; \
             `backupctl retention` removes any older than retention.incomplete_after",
        ),
        Err(e) => r.warn(
            "unfinished uploads",
            format!("cannot look for them: {e:#}"),
            "make the repository readable by this user",
        ),
    }
}

/// Superuser, or exactly the grants the jobs need (each missing one named with its GRANT).
async fn check_privileges(client: &tokio_postgres::Client, r: &mut Report) {
    // (what, SQL test, GRANT that fixes it)
    const NEEDS: &[(&str, &str, &str)] = &[
        (
            "EXECUTE on pg_backup_start",
            "has_function_privilege(to_regprocedure('pg_backup_start(text,boolean)'), 'EXECUTE')",
            "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO {u};",
        ),
        (
            "EXECUTE on pg_backup_stop",
            "has_function_privilege(to_regprocedure('pg_backup_stop(boolean)'), 'EXECUTE')",
            "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO {u};",
        ),
        (
            "EXECUTE on pg_switch_wal",
            "has_function_privilege(to_regprocedure('pg_switch_wal()'), 'EXECUTE')",
            "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {u};",
        ),
        (
            "EXECUTE on pg_create_restore_point",
            "has_function_privilege(to_regprocedure('pg_create_restore_point(text)'), 'EXECUTE')",
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO {u};",
        ),
        (
            "pg_monitor (settings, pg_control_*, archiver statistics)",
            "pg_has_role('pg_monitor', 'MEMBER')",
            "GRANT pg_monitor TO {u};",
        ),
        (
            "pg_read_all_data (logical dumps read every table)",
            "pg_has_role('pg_read_all_data', 'MEMBER')",
            "GRANT pg_read_all_data TO {u};",
        ),
    ];
    let tests: Vec<String> = NEEDS
        .iter()
        .map(|(_, sql, _)| format!("coalesce({sql}, false)"))
        .collect();
    let sql = format!(
        "SELECT rolsuper, current_user::text, {} FROM pg_roles WHERE rolname = current_user",
        tests.join(", ")
    );
    let row = match client.query_one(&sql, &[]).await {
        Ok(row) => row,
        Err(e) => {
            r.fail(
                "privileges",
                format!("{:#}", anyhow::Error::from(e)),
                "connect as a superuser",
            );
            return;
        }
    };
    let (sup, user): (bool, String) = (row.get(0), row.get(1));
    if sup {
        r.ok("privileges", format!("{user} is a superuser"));
        return;
    }
    let quoted = format!("\"{}\"", user.replace('"', "\"\""));
    let missing: Vec<(&str, String)> = NEEDS
        .iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(i + 2))
        .map(|(_, (what, _, grant))| (*what, grant.replace("{u}", &quoted)))
        .collect();
    if missing.is_empty() {
        r.ok(
            "privileges",
            format!("{user} is not a superuser but has every grant the jobs need"),
        );
    } else {
        r.fail(
            "privileges",
            format!(
                "{user} lacks {}",
                missing
                    .iter()
                    .map(|(w, _)| *w)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            missing
                .iter()
                .map(|(_, g)| g.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
}

async fn check_archiving(
    client: &tokio_postgres::Client,
    cfg: &crate::config::Config,
    r: &mut Report,
) {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), \
                    current_setting('archive_library', true), current_setting('archive_command')",
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
    let (level, mode, library, command): (String, String, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    archive::judge_settings(
        r,
        cfg,
        &level,
        &mode,
        library.as_deref().unwrap_or(""),
        &command,
    );
}

/// What backups of a standby do and need: who archives their WAL, and whether the
/// primary can be asked to end a backup's last segment (`postgres.primary_conninfo`).
async fn check_standby(
    client: &tokio_postgres::Client,
    cfg: &crate::config::Config,
    info: &ServerInfo,
    r: &mut Report,
) {
    let mode = client
        .query_one("SELECT current_setting('archive_mode')", &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .unwrap_or_default();
    let archiver = if mode == "always" {
        "this standby (archive_mode = always) or the primary".to_string()
    } else {
        format!("the primary (this standby, archive_mode = {mode}, archives only once promoted)")
    };
    r.ok(
        "standby",
        format!(
            "physical backups copy this standby's data directory, so the primary does not pay \
             for the copy; their WAL must be archived by {archiver} into this repository; \
             logical backups get no restore point (only a primary can create one)"
        ),
    );
    if mode == "off" {
        r.warn(
            "standby",
            "archive_mode is off here: once promoted, this server archives nothing",
            "set archive_mode = on and archive_command = 'backupctl … wal-push %p' on the standby too, \
             so that archiving goes on after a failover",
        );
    }
    let Some(conninfo) = &cfg.postgres.primary_conninfo else {
        r.warn(
            "primary",
            "postgres.primary_conninfo is not set: a physical backup waits until the primary ends \
             its last WAL segment (at the primary's archive_timeout, or when the segment fills), \
             at most backup.archive_timeout",
            "set postgres.primary_conninfo to reach the primary, where backups then call \
             pg_switch_wal(), or set archive_timeout on the primary",
        );
        return;
    };
    let probe = async {
        let (at, primary) =
            crate::pg::conn::connect_primary(&cfg.postgres, conninfo, info.system_identifier)
                .await?;
        let may_switch: bool = primary
            .query_one(
                "SELECT has_function_privilege('pg_switch_wal()', 'EXECUTE')",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("read the primary's privileges: {e}"))?
            .get(0);
        anyhow::Ok((at, may_switch))
    }
    .await;
    match probe {
        Err(e) => r.fail(
            "primary",
            format!("{e:#}"),
            "make postgres.primary_conninfo reach this standby's primary (host, port, user; \
             the password comes from the string, postgres.password_file or PGPASSWORD)",
        ),
        Ok((at, false)) => r.fail(
            "primary",
            format!("the user of postgres.primary_conninfo ({at}) may not call pg_switch_wal()"),
            "connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO that role",
        ),
        Ok((at, true)) => r.ok(
            "primary",
            format!("{at}: physical backups of this standby ask it to end their last WAL segment (pg_switch_wal)"),
        ),
    }
}

/// `backup.state_dir` (job locks, the daemon's history) and the alert webhook.
fn check_local_state(cfg: &crate::config::Config, r: &mut Report) {
    let dir = &cfg.backup.state_dir;
    let probe = std::fs::create_dir_all(dir)
        .and_then(|_| tempfile::Builder::new().prefix(".check-").tempfile_in(dir));
    match probe {
        Ok(_) => r.ok(
            "state_dir",
            format!("{} is writable (job locks, daemon history)", dir.display()),
        ),
        Err(e) => r.fail(
            "state_dir",
            format!("{}: {e}", dir.display()),
            "create backup.state_dir writable by this user (the daemon and the CLI lock jobs there)",
        ),
    }
    match crate::webhook::describe_target(cfg) {
        Ok(None) => {}
        Ok(Some(what)) => r.ok("webhook", what),
        Err(e) => r.fail("webhook", format!("{e:#}"), "fix [notify]"),
    }
}
