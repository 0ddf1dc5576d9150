//! `--on-failure in-place`: the backup's objects are dropped and recreated in the
//! database itself, in one transaction (`restore --clean`). That can only bring the
//! database back when the migration added nothing the backup does not hold: an added
//! table, view, sequence, function, type, schema, extension or foreign key would survive
//! the restore, or block it when it depends on a restored object (`cannot drop
//! constraint … because other objects depend on it`). Those are found first — an object
//! is in the backup when its catalog OID or its name is in the dump's table of contents —
//! and the restore is refused, before any change, naming them.

use std::collections::HashSet;

use anyhow::Context;

use crate::config::Config;
use crate::ops::restore::logical::{self, LogicalRestoreRequest};
use crate::pg::conn::ConnParams;
use crate::pg::toc;

/// Top-level objects of the database, with what identifies them in a dump's TOC.
const OBJECTS: &str = "
WITH objs(classid, objid, schema, tag, func) AS (
  SELECT 'pg_class'::regclass::oid, c.oid, n.nspname, c.relname, false
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  UNION ALL
  SELECT 'pg_constraint'::regclass::oid, co.oid, n.nspname, c.relname || ' ' || co.conname, false
    FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE co.contype = 'f'
  UNION ALL
  SELECT 'pg_proc'::regclass::oid, p.oid, n.nspname, p.proname, true
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  UNION ALL
  SELECT 'pg_type'::regclass::oid, t.oid, n.nspname, t.typname, false
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE t.typtype IN ('c', 'd', 'e', 'r')
     AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  UNION ALL
  SELECT 'pg_namespace'::regclass::oid, n.oid, '-', n.nspname, false
    FROM pg_namespace n
   WHERE n.nspname NOT IN ('public', 'pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg\\_%'
  UNION ALL
  SELECT 'pg_extension'::regclass::oid, e.oid, '-', e.extname, false
    FROM pg_extension e WHERE e.extname <> 'plpgsql'
)
SELECT classid, objid, schema, tag, func, pg_describe_object(classid, objid, 0)
  FROM objs
 WHERE schema NOT IN ('pg_catalog', 'information_schema')
   AND schema NOT LIKE 'pg\\_toast%' AND schema NOT LIKE 'pg\\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = objs.classid AND d.objid = objs.objid AND d.deptype = 'e')
 ORDER BY 6";

/// What database `db` holds that the dump (its TOC `listing`) does not.
pub async fn added_objects(params: &ConnParams, listing: &str) -> anyhow::Result<Vec<String>> {
    let entries: Vec<_> = listing.lines().filter_map(toc::parse_line).collect();
    let by_oid: HashSet<(u32, u32)> = entries
        .iter()
        .map(|e| (e.catalog_table_oid, e.oid))
        .collect();
    let client = params.connect().await?;
    let rows = client
        .query(OBJECTS, &[])
        .await
        .context("list the database's objects")?;
    let mut added = Vec::new();
    for r in rows {
        let (classid, objid): (u32, u32) = (r.get(0), r.get(1));
        if by_oid.contains(&(classid, objid)) {
            continue;
        }
        let (schema, tag, func): (String, String, bool) = (r.get(2), r.get(3), r.get(4));
        let prefix = format!("{schema} {tag}{}", if func { "(" } else { " " });
        if entries.iter().any(|e| e.rest.starts_with(&prefix)) {
            continue;
        }
        added.push(r.get::<_, String>(5));
    }
    Ok(added)
}

pub async fn run(
    cfg: &Config,
    params: &ConnParams,
    backup_id: &str,
    db: &str,
    steps: &mut Vec<String>,
) -> anyhow::Result<()> {
    let listing = logical::toc_listing(cfg, backup_id, db).await?;
    let added = added_objects(&params.with_dbname(db), &listing).await?;
    if !added.is_empty() {
        anyhow::bail!(
            "refusing to restore database {db} in place (nothing was changed; it is as the migration left it): \
             the migration added {} object(s) the backup does not hold, which would survive or block the restore: {}. \
             Drop them and run `backupctl restore --logical {backup_id} --database {db} --dbname {db} --clean`, or use --on-failure swap",
            added.len(),
            added.join(", ")
        );
    }
    let lines = logical::run(
        cfg,
        &LogicalRestoreRequest {
            id: backup_id.to_string(),
            dbname: Some(db.to_string()),
            database: Some(db.to_string()),
            clean: true,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("restore backup {backup_id} into database {db} in place"))?;
    steps.extend(lines);
    Ok(())
}
