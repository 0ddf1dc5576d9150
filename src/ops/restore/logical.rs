//! `backupctl restore --logical ID`: restore a database (or some of its tables) and/or
//! the roles of a logical backup: databases with pg_restore, roles and tablespaces by
//! running the stored `pg_dumpall --globals-only` script statement by statement over the
//! protocol — never through psql, whose meta-commands would let whoever can write the
//! repository run shell commands on this host (see [`crate::pg::script`]).
//!
//! Safety rules: every downloaded byte is checked against the manifest's checksum
//! before anything is committed into a database that already existed (the archive is
//! downloaded, verified, then restored in one transaction); only a database this
//! command creates (`--create`) is fed while downloading, and it is dropped again if
//! anything fails. An existing non-empty target (or existing tables with `--table`) is
//! refused unless `--clean`. pg_restore runs with `--exit-on-error`: a restore that
//! reports success restored everything it was asked to.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::codec::{algorithm_of, Digest};
use crate::config::Config;
use crate::manifest::{BackupKind, DatabaseDump, LogicalInfo, Manifest, ObjectEntry};
use crate::pg::bin::PgBin;
use crate::pg::conn::{ConnParams, ServerInfo};
use crate::pg::proc::{self, Proc};
use crate::pg::script;
use crate::pg::sql::{conninfo_dbname, ident as quote_ident, literal as quote_literal};
use crate::pg::toc::{self, WantedTable};
use crate::repo::{self, layout, Repository};
use crate::transfer;

/// `backupctl restore --logical ID`, as the operation sees it.
#[derive(Debug, Clone, Default)]
pub struct LogicalRestoreRequest {
    /// The logical backup to restore.
    pub id: String,
    /// The database to restore into.
    pub dbname: Option<String>,
    /// Which dumped database to take (default: the only one).
    pub database: Option<String>,
    /// Only these tables (`schema.table`).
    pub tables: Vec<String>,
    pub create: bool,
    pub clean: bool,
    /// With `tables`: replace the rows of existing tables, definitions untouched.
    pub data_only: bool,
    /// Restore roles and tablespaces.
    pub globals: bool,
    pub jobs: Option<u32>,
    pub dry_run: bool,
}

/// Restore logical backup `args.id`. Returns one line per thing restored (or, with
/// `dry_run`, per thing that would be), for the operator.
pub async fn run(cfg: &Config, args: &LogicalRestoreRequest) -> anyhow::Result<Vec<String>> {
    let id = args.id.as_str();
    if args.dbname.is_none() {
        if !args.globals {
            return Err(crate::user_error!(
                "restore --logical needs --dbname NAME (the database to restore into), or --globals alone to restore roles"
            ));
        }
        if args.create || args.clean || !args.tables.is_empty() || args.jobs.is_some() {
            return Err(crate::user_error!(
                "--create, --clean, --table and --jobs need --dbname NAME"
            ));
        }
    }
    if args.data_only
        && (args.tables.is_empty() || args.create || args.clean || args.jobs.is_some())
    {
        return Err(crate::user_error!(
            "--data-only replaces the rows of existing tables: it needs --table and --dbname, and goes without --create, --clean and --jobs"
        ));
    }
    if args.jobs == Some(0) {
        return Err(crate::user_error!("--jobs must be at least 1"));
    }
    let repo = repo::open_for_reading(cfg, Some(crate::config::StoredKind::Logical), true).await?;
    let manifest = Manifest::load(repo.as_ref(), id).await?.ok_or_else(|| {
        crate::user_error!(
            "no complete backup {id} in {} (`backupctl list` shows the backups)",
            repo.describe()
        )
    })?;
    let logical = match (&manifest.kind, &manifest.logical) {
        (BackupKind::Logical, Some(l)) => l,
        _ => {
            return Err(crate::user_error!(
                "backup {id} is a physical backup: restore it with --pgdata DIR (and a recovery target)"
            ))
        }
    };
    let dump = match &args.dbname {
        Some(_) => Some(pick_database(logical, args.database.as_deref(), id)?),
        None => None,
    };
    let wanted = match dump {
        Some(d) => resolve_tables(d, &args.tables)?,
        None => vec![],
    };

    let params = ConnParams::from_config(&cfg.postgres)?;
    let client = params.connect().await?;
    let info = ServerInfo::query(&client).await?;
    let bin = PgBin::clients(&cfg.postgres, Some(info.major()))?;
    if let Some(problem) = crate::pg::bin::restore_incompatibility(bin.client_major, info.major()) {
        return Err(crate::user_error!("{problem}"));
    }

    let mut lines = Vec::new();
    if args.dry_run {
        lines.push(format!(
            "restore from logical backup {id} (taken {})",
            manifest.start_time
        ));
        if args.globals {
            lines.push(format!(
                "  roles and tablespaces from {}",
                logical.globals_object
            ));
        }
        if let (Some(d), Some(target)) = (dump, &args.dbname) {
            lines.push(format!(
                "  database {} → {target}{}{}",
                d.name,
                if args.create { " (created)" } else { "" },
                if args.clean {
                    " (existing objects dropped first)"
                } else {
                    ""
                }
            ));
            for w in &wanted {
                lines.push(format!("  table {}.{}", w.schema, w.table));
            }
        }
        lines.push("dry run: nothing was changed".into());
        return Ok(lines);
    }

    if args.globals {
        lines.extend(restore_globals(&repo, &manifest, logical, &params, false).await?);
    }
    if let (Some(d), Some(target), true) = (dump, &args.dbname, args.data_only) {
        let work = crate::ops::workdir::create(cfg, "restore")?;
        lines.extend(
            super::data_only::run(
                &repo,
                &manifest,
                d,
                &wanted,
                &bin,
                &params.with_dbname(target),
                target,
                work.path(),
            )
            .await
            .with_context(|| format!("replace rows from backup {id} in database {target}"))?,
        );
        return Ok(lines);
    }
    if let (Some(d), Some(target)) = (dump, &args.dbname) {
        let opts = Target {
            name: target,
            create: args.create,
            clean: args.clean,
            jobs: args.jobs.unwrap_or(1),
            scratch: false,
        };
        lines.extend(
            restore_database(
                cfg, &repo, &manifest, d, &wanted, &bin, &params, &client, &opts,
            )
            .await
            .with_context(|| format!("restore database {} of backup {id} into {target}", d.name))?,
        );
    }
    Ok(lines)
}

/// Restore the roles and every database of logical backup `m` into the empty scratch
/// server `params` reaches (verification). Every object's checksum is checked.
pub async fn restore_all_into(
    cfg: &crate::config::Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    bin: &PgBin,
    params: &ConnParams,
) -> anyhow::Result<()> {
    let l = m
        .logical
        .as_ref()
        .context("logical backup without logical info")?;
    // The fresh scratch cluster has its own empty `postgres` database: replace it.
    let control = params.with_dbname("template1");
    let client = control.connect().await?;
    restore_globals(repo, m, l, &control, true).await?;
    for d in &l.databases {
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&d.name)))
            .await
            .with_context(|| format!("drop the scratch cluster's own database {}", d.name))?;
        let t = Target {
            name: &d.name,
            create: true,
            clean: false,
            jobs: 1,
            scratch: true,
        };
        restore_database(cfg, repo, m, d, &[], bin, &control, &client, &t)
            .await
            .with_context(|| format!("restore database {}", d.name))?;
    }
    Ok(())
}

/// The `pg_restore -l` listing stored with database `database` of logical backup `id`
/// (checksum verified).
pub async fn toc_listing(cfg: &Config, id: &str, database: &str) -> anyhow::Result<String> {
    let repo = repo::open_for_reading(cfg, Some(crate::config::StoredKind::Logical), true).await?;
    let m = Manifest::load(repo.as_ref(), id)
        .await?
        .with_context(|| format!("no complete backup {id}"))?;
    let l = m
        .logical
        .as_ref()
        .with_context(|| format!("backup {id} is not a logical backup"))?;
    let d = pick_database(l, Some(database), id)?;
    let name = d
        .toc_object
        .as_deref()
        .with_context(|| format!("backup {id} has no table of contents for database {database}"))?;
    let bytes = fetch_small(&repo, &m, name).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn pick_database<'a>(
    l: &'a LogicalInfo,
    name: Option<&str>,
    id: &str,
) -> anyhow::Result<&'a DatabaseDump> {
    let names = || {
        l.databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => l.database(n).ok_or_else(|| {
            crate::user_error!("backup {id} has no database {n:?} (it has: {})", names())
        }),
        None if l.databases.len() == 1 => Ok(&l.databases[0]),
        None => Err(crate::user_error!(
            "backup {id} holds several databases ({}); choose one with --database",
            names()
        )),
    }
}

/// The tables `--table` names (`schema.table`, or `table` when unambiguous); a
/// partitioned table brings its partitions.
pub fn resolve_tables(d: &DatabaseDump, names: &[String]) -> anyhow::Result<Vec<WantedTable>> {
    let mut out: Vec<WantedTable> = Vec::new();
    for name in names {
        // Every split at a dot: schema and table names may contain dots themselves.
        let mut hits: Vec<(String, String)> = name
            .match_indices('.')
            .map(|(i, _)| (name[..i].to_string(), name[i + 1..].to_string()))
            .filter(|(s, t)| {
                d.tables.iter().any(|x| &x.schema == s && &x.table == t)
                    || d.tables
                        .iter()
                        .any(|x| x.partition_of.as_deref() == Some(&format!("{s}.{t}")))
            })
            .collect();
        if hits.is_empty() {
            hits = d
                .tables
                .iter()
                .filter(|x| &x.table == name)
                .map(|x| (x.schema.clone(), x.table.clone()))
                .collect();
        }
        let (schema, table) = match hits.len() {
            1 => hits.remove(0),
            0 => {
                return Err(crate::user_error!(
                    "table {name:?} is not in the dump of database {} (write schema.table; the backup's tables are listed by `backupctl info ID`)",
                    d.name
                ))
            }
            _ => {
                return Err(crate::user_error!(
                    "table {name:?} is ambiguous in database {}: {}; write schema.table",
                    d.name,
                    hits.iter().map(|(s, t)| format!("{s}.{t}")).collect::<Vec<_>>().join(", ")
                ))
            }
        };
        let qualified = format!("{schema}.{table}");
        let leaves: Vec<_> = d
            .tables
            .iter()
            .filter(|x| x.partition_of.as_deref() == Some(qualified.as_str()))
            .collect();
        let mut add = |w: WantedTable| {
            if !out
                .iter()
                .any(|o| o.schema == w.schema && o.table == w.table)
            {
                out.push(w);
            }
        };
        if leaves.is_empty() {
            let t = d
                .tables
                .iter()
                .find(|x| x.schema == schema && x.table == table);
            add(WantedTable {
                schema,
                table,
                oid: t.map(|t| t.oid).filter(|o| *o != 0),
                attach: false,
            });
        } else {
            add(WantedTable {
                schema,
                table,
                oid: None,
                attach: true,
            });
            for l in leaves {
                add(WantedTable {
                    schema: l.schema.clone(),
                    table: l.table.clone(),
                    oid: Some(l.oid).filter(|o| *o != 0),
                    attach: true,
                });
            }
        }
    }
    Ok(out)
}

pub(super) fn digest(o: &ObjectEntry) -> Digest {
    Digest {
        sha256: o.sha256.clone(),
        size: o.stored_size,
    }
}

pub(super) fn object<'a>(m: &'a Manifest, name: &str) -> anyhow::Result<&'a ObjectEntry> {
    m.object(name).ok_or_else(|| {
        anyhow::anyhow!(
            "the manifest of backup {} does not list object {name}",
            m.id
        )
    })
}

/// Download a small object whole, verified against the manifest.
pub(super) async fn fetch_small(
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let o = object(m, name)?;
    let key = layout::backup_object_key(&m.id, name);
    transfer::from_a_sound_copy(repo, &key, |repo| {
        let key = key.clone();
        async move {
            transfer::get_stream(&repo, &key, algorithm_of(name), Some(digest(o)), |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v)?;
                Ok(v)
            })
            .await
        }
    })
    .await
}

/// Roles and tablespaces: the backup's `pg_dumpall --globals-only` script, one
/// statement at a time over the protocol. Those that already exist are kept (their
/// `CREATE` fails and is reported as such; the `ALTER` that follows still applies the
/// backup's attributes); any other error fails the restore once every statement ran.
///
/// The script comes from the repository, which whoever can write the bucket controls:
/// it is never given to psql (whose meta-commands run shell commands). A script with a
/// meta-command is refused before anything runs (see [`crate::pg::script`]).
async fn restore_globals(
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    l: &LogicalInfo,
    params: &ConnParams,
    scratch: bool,
) -> anyhow::Result<Option<String>> {
    let object = &l.globals_object;
    let sql = fetch_small(repo, m, object)
        .await
        .context("download the roles and tablespaces script")?;
    let refused = |why: String| {
        anyhow::anyhow!(
            "backup {}: {object} {why}; refusing to run it (nothing was executed). \
             backupctl never writes this: the object was altered by someone who can write the repository; \
             restore the roles from another backup and find out who has write access",
            m.id
        )
    };
    let text = String::from_utf8(sql).map_err(|e| {
        refused(format!(
            "is not UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let statements = script::split(&text).map_err(|r| refused(r.to_string()))?;
    let statements: Vec<_> = statements
        .into_iter()
        // Tablespace locations belong to the production server.
        .filter(|s| !(scratch && s.sql.contains(" TABLESPACE ")))
        // The connection speaks UTF-8, which the script (checked above) is in.
        .filter(|s| {
            !s.sql
                .to_ascii_uppercase()
                .starts_with("SET CLIENT_ENCODING")
        })
        .collect();
    let creates = statements
        .iter()
        .filter(|s| s.sql.starts_with("CREATE ROLE ") || s.sql.starts_with("CREATE TABLESPACE "))
        .count();
    let client = params.connect().await?;
    let mut existing = 0usize;
    let mut other = Vec::new();
    for s in &statements {
        if let Err(e) = client.batch_execute(&s.sql).await {
            match e.as_db_error() {
                Some(db) if *db.code() == SqlState::DUPLICATE_OBJECT => existing += 1,
                Some(db) => other.push(format!("line {}: ERROR: {}", s.line, db.message())),
                // The connection is gone: nothing more can run.
                None => {
                    return Err(anyhow::Error::from(e)).with_context(|| {
                        format!("restore roles and tablespaces ({object} line {})", s.line)
                    })
                }
            }
        }
    }
    drop(client);
    if !other.is_empty() {
        anyhow::bail!(
            "restoring roles and tablespaces from {object} of backup {}: {}",
            m.id,
            other.join("; ")
        );
    }
    tracing::info!(
        "restored roles and tablespaces: {} created, {existing} already existed (kept; attributes updated from the backup)",
        creates.saturating_sub(existing),
    );
    Ok((!scratch).then(|| {
        format!(
            "roles and tablespaces: {} created, {existing} already existed",
            creates.saturating_sub(existing),
        )
    }))
}

struct Target<'a> {
    name: &'a str,
    create: bool,
    clean: bool,
    jobs: u32,
    /// A verification scratch restore: no tablespaces (their locations belong to the
    /// production server) and nothing printed on stdout.
    scratch: bool,
}

#[allow(clippy::too_many_arguments)]
async fn restore_database(
    cfg: &crate::config::Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    d: &DatabaseDump,
    wanted: &[WantedTable],
    bin: &PgBin,
    params: &ConnParams,
    client: &Client,
    t: &Target<'_>,
) -> anyhow::Result<Vec<String>> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&t.name])
        .await?
        .is_some();
    match (t.create, exists) {
        (true, true) => {
            return Err(crate::user_error!(
                "database {:?} already exists: choose a new --dbname, or restore into it without --create (--clean replaces the objects the backup holds)",
                t.name
            ))
        }
        (false, false) => {
            return Err(crate::user_error!(
                "database {:?} does not exist; add --create to create it",
                t.name
            ))
        }
        _ => {}
    }
    let target = params.with_dbname(t.name);
    if exists {
        refuse_non_empty(&target, wanted, t).await?;
    } else {
        let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(t.name));
        for (k, v) in [
            ("ENCODING", &d.encoding),
            ("LC_COLLATE", &d.collate),
            ("LC_CTYPE", &d.ctype),
        ] {
            if let Some(v) = v {
                sql.push_str(&format!(" {k} {}", quote_literal(v)));
            }
        }
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("create database {}", t.name))?;
    }

    let work = crate::ops::workdir::create(cfg, "restore")?;
    let result = feed_pg_restore(repo, m, d, wanted, bin, &target, t, !exists, work.path()).await;
    if let Err(e) = result {
        if !exists {
            let drop = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(t.name)
            );
            return match client.batch_execute(&drop).await {
                Ok(()) => Err(e.context(format!(
                    "dropped database {} again (this restore created it)",
                    t.name
                ))),
                Err(de) => Err(e.context(format!(
                    "database {} was created by this restore and could not be dropped ({de}); drop it before retrying",
                    t.name
                ))),
            };
        }
        return Err(e);
    }

    // Report what was restored; for single tables also prove the row counts.
    let target_client = target.connect().await?;
    if t.scratch {
        return Ok(vec![]);
    }
    // Prove the rows: every restored table's count against the manifest.
    let tables: Vec<_> = if wanted.is_empty() {
        d.tables.iter().collect()
    } else {
        d.tables
            .iter()
            .filter(|x| {
                wanted
                    .iter()
                    .any(|w| x.schema == w.schema && x.table == w.table)
            })
            .collect()
    };
    let mut counted = Vec::new();
    let mut differences = Vec::new();
    for x in &tables {
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(&x.schema),
            quote_ident(&x.table)
        );
        match target_client.query_one(&sql, &[]).await {
            Ok(row) => {
                let n: i64 = row.get(0);
                if n != x.rows {
                    differences.push(format!(
                        "{}.{} has {n} rows, the backup recorded {}",
                        x.schema, x.table, x.rows
                    ));
                }
                counted.push((*x, n));
            }
            Err(e) => differences.push(format!(
                "{}.{} cannot be read after the restore: {e}",
                x.schema, x.table
            )),
        }
    }
    // A whole database restored into one of its own: its schema, counted by kind,
    // must be the dump's.
    if wanted.is_empty() && !exists {
        if let Some((_, mismatches)) = schema_mismatches(bin, &target, d, work.path()).await? {
            differences.extend(mismatches);
        }
    }
    if !differences.is_empty() {
        anyhow::bail!(
            "the restored database {} does not match backup {}: {}",
            t.name,
            m.id,
            differences.join("; ")
        );
    }
    let mut lines = Vec::new();
    if wanted.is_empty() {
        lines.push(format!(
            "restored database {} of backup {} into {}: {} tables, {} rows counted (as recorded in the backup), {} large objects",
            d.name,
            m.id,
            t.name,
            counted.len(),
            counted.iter().map(|(_, n)| n).sum::<i64>(),
            d.large_objects
        ));
    } else {
        for w in wanted {
            match counted
                .iter()
                .find(|(x, _)| x.schema == w.schema && x.table == w.table)
            {
                Some((_, n)) => lines.push(format!(
                    "restored table {}.{} into {}: {n} rows (as recorded in backup {})",
                    w.schema, w.table, t.name, m.id
                )),
                None => lines.push(format!(
                    "restored table {}.{} (partitioned)",
                    w.schema, w.table
                )),
            }
        }
    }
    Ok(lines)
}

/// The restored database (`target`), dumped again schema-only: its TOC counted by kind
/// against the backup's (`None` when the backup recorded no counts). Returns what
/// matched and every difference.
pub async fn schema_mismatches(
    bin: &PgBin,
    target: &ConnParams,
    d: &DatabaseDump,
    work: &Path,
) -> anyhow::Result<Option<(String, Vec<String>)>> {
    if d.toc_counts.is_empty() {
        return Ok(None);
    }
    let file = work.join("schema.dump");
    let dbname = target.dbname.clone();
    let child_env = target.child_env()?;
    let mut cmd = bin.std_command("pg_dump");
    cmd.args(["--schema-only", "-Fc", "-f"])
        .arg(&file)
        .arg("-d")
        .arg(conninfo_dbname(&dbname));
    child_env.apply(&mut cmd);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .context("run pg_dump --schema-only on the restored database")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump of the restored database {dbname} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let out = bin
        .command("pg_restore")
        .arg("-l")
        .arg(&file)
        .output()
        .await
        .context("run pg_restore -l")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_restore -l failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let _ = std::fs::remove_file(&file);
    let restored = toc::counts(&String::from_utf8_lossy(&out.stdout));
    Ok(Some(toc::compare_counts(&d.toc_counts, &restored)))
}

/// Refuse to restore over existing data unless `--clean`.
async fn refuse_non_empty(
    target: &ConnParams,
    wanted: &[WantedTable],
    t: &Target<'_>,
) -> anyhow::Result<()> {
    if t.clean {
        return Ok(());
    }
    let c = target.connect().await?;
    if !wanted.is_empty() {
        for w in wanted {
            let q = format!("{}.{}", quote_ident(&w.schema), quote_ident(&w.table));
            let row = c
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
                .await?;
            if row.get::<_, bool>(0) {
                return Err(crate::user_error!(
                    "table {}.{} already exists in database {}: restore into another database, or add --clean to drop and replace it",
                    w.schema, w.table, t.name
                ));
            }
        }
        return Ok(());
    }
    let n: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%')
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
                  + (SELECT count(*) FROM pg_namespace
                     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
                       AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%')",
            &[],
        )
        .await?
        .get(0);
    if n > 0 {
        return Err(crate::user_error!(
            "database {} is not empty ({n} objects): restore into a new database (--create), or add --clean to drop and replace the objects the backup holds",
            t.name
        ));
    }
    Ok(())
}

/// Download the database's archive, checksum verified, to `work/archive.dump`.
async fn download(
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    d: &DatabaseDump,
    work: &Path,
) -> anyhow::Result<()> {
    let o = object(m, &d.object)?;
    let key = layout::backup_object_key(&m.id, &d.object);
    transfer::get_to_file(
        repo,
        &key,
        algorithm_of(&d.object),
        Some(digest(o)),
        &work.join("archive.dump"),
    )
    .await
    .context("download the database archive")?;
    Ok(())
}

/// Run pg_restore. A database this restore created is fed while downloading (a bad
/// checksum fails the restore and the database is dropped); an existing one gets the
/// archive only after it was downloaded and verified, in one transaction (unless
/// `--jobs`, which needs a file anyway).
#[allow(clippy::too_many_arguments)]
async fn feed_pg_restore(
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    d: &DatabaseDump,
    wanted: &[WantedTable],
    bin: &PgBin,
    target: &ConnParams,
    t: &Target<'_>,
    created: bool,
    work: &Path,
) -> anyhow::Result<()> {
    let o = object(m, &d.object)?;
    let key = layout::backup_object_key(&m.id, &d.object);
    // Kept until pg_restore has exited: it holds the password file.
    let child_env = target.child_env()?;
    let mut cmd = bin.std_command("pg_restore");
    cmd.args(["--exit-on-error", "--no-password", "-d"])
        .arg(conninfo_dbname(t.name));
    child_env.apply(&mut cmd);
    if t.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if t.scratch {
        cmd.arg("--no-tablespaces");
    }
    if !wanted.is_empty() {
        let toc_name = d.toc_object.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "backup {} has no table of contents for database {}",
                m.id,
                d.name
            )
        })?;
        let listing = fetch_small(repo, m, toc_name).await?;
        let listing = String::from_utf8_lossy(&listing);
        let (list, missing) = toc::select_tables(&listing, wanted);
        anyhow::ensure!(
            missing.is_empty(),
            "the dump of database {} has no definition of {}",
            d.name,
            missing.join(", ")
        );
        let list = if t.clean && !created {
            // Into a live database: the table with everything that belongs to it, or
            // a refusal naming what blocks it, before any change.
            download(repo, m, d, work).await?;
            super::table_clean::select(bin, &work.join("archive.dump"), &listing, wanted, target)
                .await?
        } else {
            list
        };
        let list_path = work.join("restore.list");
        std::fs::write(&list_path, list)?;
        cmd.arg("-L").arg(&list_path);
    }
    let from_file = t.jobs > 1 || !created;
    if !from_file {
        cmd.stdin(Stdio::piped());
        return transfer::get_stream(
            repo,
            &key,
            algorithm_of(&d.object),
            Some(digest(o)),
            move |r| {
                let mut child = Proc::spawn(cmd.stdout(Stdio::null()), "pg_restore")?;
                let mut stdin = child.take_stdin();
                let copied = std::io::copy(r, &mut stdin);
                drop(stdin);
                // pg_restore's own error explains a broken pipe. With a -L list it may
                // finish (successfully) before reading the whole archive.
                child.finish()?;
                match copied {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        Err(anyhow::Error::from(e).context("feed pg_restore"))
                    }
                    _ => Ok(()),
                }
            },
        )
        .await;
    }
    let file = work.join("archive.dump");
    if !file.exists() {
        download(repo, m, d, work).await?;
    }
    if t.jobs > 1 {
        cmd.arg(format!("--jobs={}", t.jobs));
    } else {
        cmd.arg("--single-transaction");
    }
    cmd.arg(&file).stdin(Stdio::null());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        proc::run_checked(cmd.stdout(Stdio::null()), "pg_restore")?;
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TableRows;
    use crate::test_fixtures::database_dump;

    fn dump() -> DatabaseDump {
        let t = |s: &str, n: &str, oid: u32, p: Option<&str>| TableRows {
            schema: s.into(),
            table: n.into(),
            rows: 1,
            oid,
            partition_of: p.map(str::to_string),
        };
        database_dump(
            "app",
            0,
            vec![
                t("public", "orders", 10, None),
                t("sales", "orders", 11, None),
                t("public", "users", 12, None),
                t("public", "m_2024", 13, Some("public.m")),
                t("public", "m_2025", 14, Some("public.m")),
                t("a.b", "c", 15, None),
            ],
        )
    }

    #[test]
    fn table_names_resolve() {
        let d = dump();
        let names = |v: Vec<WantedTable>| -> Vec<String> {
            v.iter()
                .map(|w| format!("{}.{}:{:?}", w.schema, w.table, w.oid))
                .collect()
        };
        let r = resolve_tables(&d, &["users".into()]).unwrap();
        assert_eq!(names(r), vec!["public.users:Some(12)"]);
        let r = resolve_tables(&d, &["sales.orders".into()]).unwrap();
        assert_eq!(names(r), vec!["sales.orders:Some(11)"]);
        let r = resolve_tables(&d, &["a.b.c".into()]).unwrap();
        assert_eq!(names(r), vec!["a.b.c:Some(15)"]);
        // A partitioned table brings its partitions.
        let r = resolve_tables(&d, &["public.m".into()]).unwrap();
        assert_eq!(
            names(r),
            vec![
                "public.m:None",
                "public.m_2024:Some(13)",
                "public.m_2025:Some(14)"
            ]
        );
        let e = resolve_tables(&d, &["orders".into()]).unwrap_err();
        assert!(format!("{e}").contains("ambiguous"), "{e}");
        let e = resolve_tables(&d, &["nope".into()]).unwrap_err();
        assert_eq!(crate::error::classify(&e).0, 2);
    }
}
