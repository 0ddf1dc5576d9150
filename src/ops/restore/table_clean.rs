//! `restore --logical ID --table T --clean` into a live database: the table comes back
//! with everything that belongs to it — owned sequences (and their values), defaults,
//! indexes, constraints, triggers, row security and policies, grants, comments, and
//! foreign keys in both directions — or the restore is refused before any change,
//! naming what blocks it.
//!
//! A dump's TOC does not say which table an index belongs to, which table a foreign key
//! references, or which table owns a sequence: those entries are rendered as SQL by
//! pg_restore (never executed here) and read for that. In the live database, anything
//! else that depends on the table — a view, a foreign key the backup does not hold, a
//! column of its row type, another table's default using its sequence — would make
//! pg_restore's `DROP` fail half-way, so it is listed and the restore refused first.
//! The restore itself runs in one transaction.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context;

use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::proc;
use crate::pg::toc::{self, sanitize, WantedTable};

/// The `pg_restore -L` list for `wanted` with all that belongs to them, after checking
/// that nothing else in the live database (`target`) depends on them.
pub async fn select(
    bin: &PgBin,
    archive: &Path,
    listing: &str,
    wanted: &[WantedTable],
    target: &ConnParams,
) -> anyhow::Result<String> {
    let client = target.connect().await?;
    // The tables as pg_dump names them in SQL.
    let mut quoted = Vec::new();
    for w in wanted {
        let q: String = client
            .query_one(
                "SELECT format('%I.%I', $1::text, $2::text)",
                &[&w.schema, &w.table],
            )
            .await?
            .get(0);
        quoted.push(q);
    }
    let blocks = render(bin, archive, listing).await?;
    // Indexes on the tables, foreign keys referencing them, sequences they own.
    let mut indexes = HashSet::new();
    let mut incoming = HashSet::new();
    let mut sequences = HashSet::new();
    let mut dangling = HashSet::new();
    for b in &blocks {
        let on = |q: &String| {
            b.sql.contains(&format!(" ON {q} USING "))
                || b.sql.contains(&format!(" ON ONLY {q} USING "))
        };
        if b.kind == "FK CONSTRAINT" {
            // Outgoing keys to a table this database lacks cannot be restored.
            let referenced = b
                .sql
                .split_once(" REFERENCES ")
                .and_then(|(_, r)| r.split_once('('))
                .map(|(r, _)| r.to_string());
            if let Some(r) = referenced {
                let present = quoted.contains(&r)
                    || client
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&r])
                        .await?
                        .get::<_, bool>(0);
                if !present {
                    dangling.insert(format!("{} {} ", b.schema, b.name));
                }
            }
        }
        match b.kind.as_str() {
            "INDEX" if quoted.iter().any(on) => {
                indexes.insert(format!("{} {} ", b.schema, b.name));
            }
            "FK CONSTRAINT"
                if quoted
                    .iter()
                    .any(|q| b.sql.contains(&format!(" REFERENCES {q}("))) =>
            {
                // Only where the referencing table exists here (a scratch database
                // holding just this table has none).
                let child = b
                    .sql
                    .lines()
                    .find_map(|l| l.strip_prefix("ALTER TABLE "))
                    .map(|l| l.trim_start_matches("ONLY ").trim().to_string());
                let exists = match child {
                    Some(c) => client
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&c])
                        .await?
                        .get::<_, bool>(0),
                    None => false,
                };
                if exists {
                    incoming.insert(format!("{} {} ", b.schema, b.name));
                }
            }
            "SEQUENCE OWNED BY"
                if quoted
                    .iter()
                    .any(|q| b.sql.contains(&format!(" OWNED BY {q}."))) =>
            {
                sequences.insert(format!("{} {} ", b.schema, b.name));
            }
            "SEQUENCE"
                if quoted
                    .iter()
                    .any(|q| b.sql.contains(&format!("ALTER TABLE {q} ALTER COLUMN "))) =>
            {
                sequences.insert(format!("{} {} ", b.schema, b.name));
            }
            _ => {}
        }
    }
    let (base, _) = toc::select_tables(listing, wanted);
    let base: HashSet<&str> = base.lines().collect();
    let mut list = String::new();
    let mut kept_fks = Vec::new();
    for line in listing.lines() {
        let Some(e) = toc::parse_line(line) else {
            continue;
        };
        let own = |prefix: &str| {
            wanted.iter().any(|w| {
                let (s, t) = (sanitize(&w.schema), sanitize(&w.table));
                e.rest.starts_with(&format!("{s} {t} "))
                    || (prefix == "acl"
                        && (e.rest.starts_with(&format!("{s} TABLE {t} "))
                            || e.rest.starts_with(&format!("{s} COLUMN {t}."))))
            })
        };
        let seq = |e: &toc::TocEntry| {
            sequences.iter().any(|p| {
                e.rest.starts_with(p.as_str())
                    || p.split_once(' ')
                        .is_some_and(|(s, n)| e.rest.starts_with(&format!("{s} SEQUENCE {}", n)))
            })
        };
        let hit = base.contains(line)
            || match e.kind {
                "DEFAULT" | "TRIGGER" | "POLICY" | "ROW SECURITY" => own(""),
                "FK CONSTRAINT" => {
                    let h = (own("") || incoming.iter().any(|p| e.rest.starts_with(p.as_str())))
                        && !dangling.iter().any(|p| e.rest.starts_with(p.as_str()));
                    if h {
                        kept_fks.push(e.rest.to_string());
                    }
                    h
                }
                "INDEX" => indexes.iter().any(|p| e.rest.starts_with(p.as_str())),
                "SEQUENCE" | "SEQUENCE OWNED BY" | "SEQUENCE SET" => seq(&e),
                "ACL" | "COMMENT" => own("acl") || seq(&e),
                _ => false,
            };
        if hit {
            list.push_str(line);
            list.push('\n');
        }
    }

    let blockers = dependents(&client, &quoted, &kept_fks).await?;
    if !blockers.is_empty() {
        return Err(crate::user_error!(
            "refusing to replace {} (nothing was changed): {} depend on it and are not in what the backup restores for it: {}. \
             Drop them first, restore the whole database side by side (--create into a new --dbname), or use --data-only to replace the rows alone",
            wanted
                .iter()
                .map(|w| format!("{}.{}", w.schema, w.table))
                .collect::<Vec<_>>()
                .join(", "),
            blockers.len(),
            blockers.join(", ")
        ));
    }
    Ok(list)
}

/// One object's SQL as pg_restore renders it, under its `-- Name: …; Type: …` header.
struct Block {
    name: String,
    kind: String,
    schema: String,
    sql: String,
}

/// Render the INDEX, FK CONSTRAINT and SEQUENCE entries of the archive as SQL (a file,
/// read here, run nowhere).
async fn render(bin: &PgBin, archive: &Path, listing: &str) -> anyhow::Result<Vec<Block>> {
    let dir = archive.parent().unwrap_or(Path::new("."));
    let list: String = listing
        .lines()
        .filter(|l| {
            toc::parse_line(l).is_some_and(|e| {
                matches!(
                    e.kind,
                    "INDEX" | "FK CONSTRAINT" | "SEQUENCE" | "SEQUENCE OWNED BY"
                )
            })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let list_path = dir.join("render.list");
    let sql_path = dir.join("render.sql");
    std::fs::write(&list_path, list)?;
    let mut cmd = bin.std_command("pg_restore");
    cmd.arg("--schema-only")
        .arg("-L")
        .arg(&list_path)
        .arg("-f")
        .arg(&sql_path)
        .arg(archive)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    tokio::task::spawn_blocking(move || proc::run_checked(&mut cmd, "pg_restore")).await??;
    let text = std::fs::read_to_string(&sql_path).context("read the rendered definitions")?;
    let mut blocks: Vec<Block> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("-- Name: ") {
            let mut parts = h.split("; ");
            let name = parts.next().unwrap_or("").to_string();
            let kind = parts
                .next()
                .and_then(|p| p.strip_prefix("Type: "))
                .unwrap_or("")
                .to_string();
            let schema = parts
                .next()
                .and_then(|p| p.strip_prefix("Schema: "))
                .unwrap_or("")
                .to_string();
            blocks.push(Block {
                name,
                kind,
                schema,
                sql: String::new(),
            });
        } else if let Some(b) = blocks.last_mut() {
            if !line.starts_with("--") {
                b.sql.push_str(line);
                b.sql.push('\n');
            }
        }
    }
    Ok(blocks)
}

/// What in the live database depends on the tables (or the sequences they own, or their
/// row types) other than what belongs to them and the foreign keys being restored.
async fn dependents(
    client: &tokio_postgres::Client,
    quoted: &[String],
    kept_fks: &[String],
) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "WITH t AS (SELECT c.oid FROM pg_class c WHERE c.oid = ANY (
                 SELECT to_regclass(x)::oid FROM unnest($1::text[]) x)),
             own AS (
               SELECT oid FROM t
               UNION SELECT d.objid FROM pg_depend d JOIN t ON d.refobjid = t.oid
                 WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                   AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S'
               UNION SELECT reltype FROM pg_class WHERE oid IN (SELECT oid FROM t))
             SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid),
                    CASE WHEN d.classid = 'pg_constraint'::regclass THEN
                      (SELECT format('%s %s %s ', n.nspname, r.relname, co.conname)
                         FROM pg_constraint co JOIN pg_class r ON r.oid = co.conrelid
                         JOIN pg_namespace n ON n.oid = r.relnamespace WHERE co.oid = d.objid) END
             FROM pg_depend d
             WHERE d.refobjid IN (SELECT oid FROM own) AND d.deptype = 'n'
               AND NOT (d.classid = 'pg_constraint'::regclass AND
                        (SELECT conrelid FROM pg_constraint WHERE oid = d.objid) IN (SELECT oid FROM t))
               AND NOT (d.classid = 'pg_attrdef'::regclass AND
                        (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid) IN (SELECT oid FROM t))
               AND NOT (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT oid FROM own))
               AND NOT (d.classid = 'pg_type'::regclass AND d.objid IN
                        (SELECT typarray FROM pg_type WHERE oid IN (SELECT oid FROM own)))
             ORDER BY 1",
            &[&quoted],
        )
        .await
        .context("list what depends on the tables")?;
    Ok(rows
        .iter()
        .filter(|r| {
            r.get::<_, Option<String>>(1)
                .is_none_or(|fk| !kept_fks.iter().any(|k| k.starts_with(&fk)))
        })
        .map(|r| r.get(0))
        .collect())
}
