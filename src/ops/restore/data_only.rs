//! `restore --logical ID --table T --data-only`: replace a table's rows with the
//! backup's in a database that is in use, its definition untouched.
//!
//! pg_restore only renders the rows (`--data-only -f FILE`, never connected to the
//! database): backupctl loads them itself, in one transaction, so that it can check
//! before COMMIT what pg_restore cannot. The stored SQL is never executed: only the
//! COPY data lines are sent, into a table and columns named from the live catalog, and
//! only when the backup's column list is exactly the table's; sequence values are
//! parsed as numbers. In that transaction: the table is locked, its rows deleted and the
//! backup's copied in (triggers and foreign-key actions off — `session_replication_role
//! = replica` — so no cascade touches another table), the row count must be the
//! manifest's, the sequences the table owns are set from the backup, and every foreign
//! key from or to the table is checked: rows that would be orphaned roll everything
//! back, and the refusal names the constraints.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;

use super::logical::{digest, fetch_small, object};
use crate::codec::algorithm_of;
use crate::manifest::{DatabaseDump, Manifest};
use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::proc;
use crate::pg::sql::literal;
use crate::pg::toc::{self, WantedTable};
use crate::repo::{layout, Repository};
use crate::transfer;

/// A table as the live database has it.
struct Live {
    /// `schema.table`, quoted as pg_dump quotes it.
    qualified: String,
    /// `col, col`, quoted as pg_dump quotes them (generated columns left out).
    columns: String,
    /// The sequences the table owns: (quoted name, schema, name).
    sequences: Vec<(String, String, String)>,
    /// The rows the manifest recorded.
    rows: i64,
    name: String,
}

impl Live {
    fn copy_header(&self) -> String {
        format!("COPY {} ({}) FROM stdin;", self.qualified, self.columns)
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    d: &DatabaseDump,
    wanted: &[WantedTable],
    bin: &PgBin,
    target: &ConnParams,
    dbname: &str,
    work: &Path,
) -> anyhow::Result<Vec<String>> {
    let client = target.connect().await?;
    let mut tables = Vec::new();
    for w in wanted {
        let Some(rec) = d
            .tables
            .iter()
            .find(|x| x.schema == w.schema && x.table == w.table)
        else {
            // A partitioned parent: its partitions are in `wanted` and carry the rows.
            continue;
        };
        tables.push(live(&client, w, rec.rows, dbname).await?);
    }

    // The rows of those tables and the values of their sequences, as SQL text.
    let toc_name = d
        .toc_object
        .as_deref()
        .with_context(|| format!("backup {} has no table of contents for {}", m.id, d.name))?;
    let listing = String::from_utf8_lossy(&fetch_small(repo, m, toc_name).await?).into_owned();
    let mut list = String::new();
    for line in listing.lines() {
        let Some(e) = toc::parse_line(line) else {
            continue;
        };
        let hit = match e.kind {
            "TABLE DATA" => wanted.iter().any(|w| match w.oid {
                Some(oid) => e.oid == oid,
                None => false,
            }),
            "SEQUENCE SET" => tables
                .iter()
                .flat_map(|t| &t.sequences)
                .any(|(_, s, n)| e.rest.starts_with(&format!("{s} {n} "))),
            _ => false,
        };
        if hit {
            list.push_str(line);
            list.push('\n');
        }
    }
    let list_path = work.join("data.list");
    std::fs::write(&list_path, list)?;
    let o = object(m, &d.object)?;
    let archive = work.join("archive.dump");
    transfer::get_to_file(
        repo,
        &layout::backup_object_key(&m.id, &d.object),
        algorithm_of(&d.object),
        Some(digest(o)),
        &archive,
    )
    .await
    .context("download the database archive")?;
    let sql_path = work.join("data.sql");
    let mut cmd = bin.std_command("pg_restore");
    cmd.args(["--data-only", "-L"])
        .arg(&list_path)
        .arg("-f")
        .arg(&sql_path)
        .arg(&archive)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    tokio::task::spawn_blocking(move || proc::run_checked(&mut cmd, "pg_restore")).await??;

    // Before any change: every COPY must be one of ours, with the table's columns.
    let mut headers = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::fs::File::open(&sql_path).await?).lines();
    let mut in_copy = false;
    while let Some(line) = lines.next_line().await? {
        if in_copy {
            in_copy = line != "\\.";
        } else if line.starts_with("COPY ") {
            headers.push(line);
            in_copy = true;
        }
    }
    for t in &tables {
        if !headers.contains(&t.copy_header()) {
            let theirs = headers
                .iter()
                .find(|h| h.starts_with(&format!("COPY {} (", t.qualified)));
            return Err(crate::user_error!(
                "refusing to replace the rows of {} (nothing was changed): {}; restore the table with --clean, or into another database",
                t.name,
                match theirs {
                    Some(h) => format!(
                        "the backup's rows have the columns {} but the table now has ({})",
                        h.trim_start_matches("COPY ").trim_end_matches(" FROM stdin;"),
                        t.columns
                    ),
                    None => "the backup holds no rows for it".into(),
                }
            ));
        }
    }
    if headers.len() != tables.len() {
        anyhow::bail!(
            "pg_restore rendered {} tables' rows, {} were asked for: {}",
            headers.len(),
            tables.len(),
            headers.join("; ")
        );
    }

    let out = load(&client, &tables, &sql_path, dbname, &m.id).await;
    if out.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    out
}

/// The live table `w`: it must exist (the definition is not restored).
async fn live(client: &Client, w: &WantedTable, rows: i64, dbname: &str) -> anyhow::Result<Live> {
    let name = format!("{}.{}", w.schema, w.table);
    let q = crate::pg::sql::qualified(&w.schema, &w.table);
    let row = client
        .query_one(
            "SELECT to_regclass($1)::oid, format('%I.%I', $2::text, $3::text)",
            &[&q, &w.schema, &w.table],
        )
        .await?;
    let Some(oid) = row.get::<_, Option<u32>>(0) else {
        return Err(crate::user_error!(
            "table {name} does not exist in database {dbname}: --data-only replaces the rows of an existing table (restore it without --data-only)"
        ));
    };
    let columns: String = client
        .query_one(
            "SELECT coalesce(string_agg(quote_ident(attname), ', ' ORDER BY attnum), '')
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
            &[&oid],
        )
        .await?
        .get(0);
    let sequences = client
        .query(
            "SELECT format('%I.%I', n.nspname, s.relname), n.nspname::text, s.relname::text
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
             ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(Live {
        qualified: row.get(1),
        columns,
        sequences,
        rows,
        name,
    })
}

/// The transaction: replace, count, set sequences, check foreign keys, commit.
async fn load(
    client: &Client,
    tables: &[Live],
    sql_path: &Path,
    dbname: &str,
    id: &str,
) -> anyhow::Result<Vec<String>> {
    client
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await
        .context("start the transaction (session_replication_role needs a superuser)")?;
    for t in tables {
        client
            .batch_execute(&format!(
                "LOCK TABLE {0} IN ACCESS EXCLUSIVE MODE; DELETE FROM ONLY {0}",
                t.qualified
            ))
            .await
            .with_context(|| format!("empty table {}", t.name))?;
    }
    let mut lines = tokio::io::BufReader::new(tokio::fs::File::open(sql_path).await?).lines();
    let mut setvals: Vec<(String, i64, bool)> = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if let Some(t) = tables.iter().find(|t| line == t.copy_header()) {
            crate::pg::copy::send_block(
                client,
                &mut lines,
                &format!("COPY {} ({}) FROM STDIN", t.qualified, t.columns),
                &format!("the backup's rows of {}", t.name),
            )
            .await?;
        } else if let Some(v) = parse_setval(&line) {
            setvals.push(v);
        }
    }
    let mut report = Vec::new();
    for t in tables {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {}", t.qualified), &[])
            .await?
            .get(0);
        anyhow::ensure!(
            n == t.rows,
            "table {} would have {n} rows, the backup recorded {}; nothing was changed",
            t.name,
            t.rows
        );
        let mut seqs = Vec::new();
        for (q, _, _) in &t.sequences {
            let want = literal(q);
            if let Some((_, value, called)) = setvals.iter().find(|(lit, _, _)| *lit == want) {
                client
                    .query_one(
                        "SELECT setval($1::text::regclass, $2, $3)",
                        &[q, value, called],
                    )
                    .await
                    .with_context(|| format!("set sequence {q}"))?;
                seqs.push(format!("sequence {q} set to {value}"));
            }
        }
        report.push(format!(
            "replaced the rows of {} in {dbname}: {n} rows (as recorded in backup {id}){}",
            t.name,
            if seqs.is_empty() {
                String::new()
            } else {
                format!("; {}", seqs.join(", "))
            }
        ));
    }
    let broken = orphans(client, tables).await?;
    if !broken.is_empty() {
        client.batch_execute("ROLLBACK").await?;
        return Err(crate::user_error!(
            "refusing to replace the rows (rolled back, nothing was changed): foreign keys would break: {}. \
             Restore the referencing tables too (--table, repeatable), or restore into another database",
            broken.join("; ")
        ));
    }
    client
        .batch_execute("COMMIT")
        .await
        .context("commit the replaced rows")?;
    Ok(report)
}

/// `SELECT pg_catalog.setval('public.t_id_seq', 42, true);` → (`'public.t_id_seq'`, 42, true).
fn parse_setval(line: &str) -> Option<(String, i64, bool)> {
    let args = line
        .strip_prefix("SELECT pg_catalog.setval(")?
        .strip_suffix(");")?;
    let (rest, called) = args.rsplit_once(", ")?;
    let (lit, value) = rest.rsplit_once(", ")?;
    Some((lit.to_string(), value.parse().ok()?, called.parse().ok()?))
}

/// Foreign keys from or to `tables` that rows violate, with how many rows.
async fn orphans(client: &Client, tables: &[Live]) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT c.oid, c.conname::text, c.conrelid::regclass::text, c.confrelid::regclass::text,
                    format('SELECT count(*) FROM %s c WHERE %s AND NOT EXISTS (SELECT 1 FROM %s p WHERE %s)',
                      c.conrelid::regclass,
                      (SELECT string_agg(format('c.%I IS NOT NULL', a.attname), ' AND ')
                         FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
                      c.confrelid::regclass,
                      (SELECT string_agg(format('p.%I = c.%I', pa.attname, ca.attname), ' AND ')
                         FROM unnest(c.conkey, c.confkey) AS k(ck, pk)
                         JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.ck
                         JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk))
             FROM pg_constraint c
             WHERE c.contype = 'f' AND c.conparentid = 0
               AND (c.conrelid = ANY($1::text[]::regclass[]) OR c.confrelid = ANY($1::text[]::regclass[]))
             ORDER BY 2",
            &[&tables.iter().map(|t| t.qualified.clone()).collect::<Vec<_>>()],
        )
        .await
        .context("list the foreign keys from and to the tables")?;
    let mut out = Vec::new();
    for r in rows {
        let check: String = r.get(4);
        let n: i64 = client
            .query_one(&check, &[])
            .await
            .with_context(|| format!("check foreign key {}", r.get::<_, String>(1)))?
            .get(0);
        if n > 0 {
            out.push(format!(
                "{} on {} ({n} rows of {} would reference missing rows of {})",
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setval_lines_parse() {
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('public.t_id_seq', 42, true);"),
            Some(("'public.t_id_seq'".into(), 42, true))
        );
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('\"Odd, Name\".\"s\"', 1, false);"),
            Some(("'\"Odd, Name\".\"s\"'".into(), 1, false))
        );
        assert_eq!(parse_setval("SELECT 1;"), None);
    }
}
