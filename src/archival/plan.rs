//! The pure half of archival: which partitions are entirely older than the cutoff,
//! whether an existing archive table can take the rows, and the exact SQL every step
//! runs (so `--dry-run` prints what a real run executes).
//!
//! Row batches delete from one leaf table at a time by `ctid`, which is unique within a
//! table (not across partitions — hence per leaf). Each batch picks its rows after a
//! cursor so the cost of a batch does not grow with the dead rows earlier batches left
//! behind: with a btree index led by the archival column the cursor is that column
//! (`col >= last`, in index order), otherwise the physical position (`ctid > last`, a TID
//! range scan). A final pass from the start proves nothing older than the cutoff is left.

use serde::Serialize;

use crate::partitions::bounds::{Pos, Range};
use crate::partitions::calendar::KeyType;
use crate::partitions::catalog::Column;
use crate::pg::sql;

/// How a leaf's batches find their next rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cursor {
    /// In index order of the archival column, after the last value moved.
    Index { index: String },
    /// In physical order, after the last `ctid` moved (TID range scan). Plain index
    /// scans, the only plans that would return rows out of physical order, are switched
    /// off for the batch; bitmap scans (physical order) stay available, also for the
    /// queries foreign-key and user triggers run inside the batch.
    Physical,
}

/// Everything one batch statement needs.
pub struct Batch<'a> {
    /// Quoted leaf table rows are deleted from.
    pub leaf: &'a str,
    /// Quoted archive table.
    pub archive: &'a str,
    /// Columns copied (every live column of the source, by name).
    pub columns: &'a [String],
    /// The archival column (unquoted).
    pub column: &'a str,
    pub key: KeyType,
    /// Cutoff literal text: rows with `column < cutoff` move.
    pub cutoff: &'a str,
    pub limit: u32,
    pub cursor: &'a Cursor,
    /// Where the previous batch of this pass stopped (`None`: from the start).
    pub after: Option<&'a str>,
    /// Quoted `archive_log` and this run's row in it.
    pub log: &'a str,
    pub log_id: i64,
}

/// `SET LOCAL`s a batch transaction needs besides `lock_timeout`.
pub fn batch_settings(cursor: &Cursor) -> &'static str {
    match cursor {
        // Keep the physical order the cursor relies on.
        Cursor::Physical => {
            "SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off"
        }
        Cursor::Index { .. } => "",
    }
}

/// `BEGIN; …; COMMIT` around the non-empty statements, as `--dry-run` prints a
/// transaction (the statements are what the run executes, in order).
pub fn transaction_text(statements: &[&str]) -> String {
    let mut out = String::from("BEGIN;\n");
    for s in statements.iter().filter(|s| !s.is_empty()) {
        out.push_str(s);
        out.push_str(";\n");
    }
    out.push_str("COMMIT");
    out
}

/// One batch: delete up to `limit` old rows of the leaf, insert exactly those rows into
/// the archive table, count the batch in `archive_log` — one statement, so all three
/// commit or none does. Returns `deleted, inserted, next cursor position`.
pub fn batch_sql(b: &Batch) -> String {
    let col = sql::ident(b.column);
    let ty = b.key.sql();
    let cutoff = format!("{}::{ty}", sql::literal(b.cutoff));
    let cols = sql::ident_list(b.columns);
    let (after, order, next) = match b.cursor {
        Cursor::Index { .. } => (
            b.after
                .map(|a| format!(" AND {col} >= {}::{ty}", sql::literal(a)))
                .unwrap_or_default(),
            format!(" ORDER BY {col}"),
            format!("max({col})::text"),
        ),
        Cursor::Physical => (
            b.after
                .map(|a| format!(" AND ctid > {}::tid", sql::literal(a)))
                .unwrap_or_default(),
            String::new(),
            "max(ctid)::text".to_string(),
        ),
    };
    format!(
        "WITH moved AS (\n\
         \x20   DELETE FROM ONLY {leaf}\n\
         \x20    WHERE ctid = ANY (ARRAY(SELECT ctid FROM ONLY {leaf} WHERE {col} < {cutoff}{after}{order} LIMIT {limit}))\n\
         \x20      AND {col} < {cutoff}\n\
         \x20   RETURNING ctid, *\n\
         ), archived AS (\n\
         \x20   INSERT INTO {archive} ({cols}) OVERRIDING SYSTEM VALUE\n\
         \x20   SELECT {cols} FROM moved\n\
         \x20   RETURNING 1\n\
         ), logged AS (\n\
         \x20   UPDATE {log} SET rows_moved = rows_moved + (SELECT count(*) FROM moved), batches = batches + 1\n\
         \x20    WHERE id = {log_id}\n\
         \x20   RETURNING 1\n\
         )\n\
         SELECT (SELECT count(*) FROM moved) AS deleted, (SELECT count(*) FROM archived) AS inserted,\n\
         \x20      (SELECT {next} FROM moved) AS next",
        leaf = b.leaf,
        archive = b.archive,
        limit = b.limit,
        log = b.log,
        log_id = b.log_id,
    )
}

/// The archive table as a copy of the source's definition: `LIKE … INCLUDING ALL`
/// (columns, defaults, NOT NULL and CHECK constraints, primary key, unique and other
/// indexes, comments, storage, compression, extended statistics), minus what cannot
/// apply to archived rows: identity and generation expressions. Those columns become
/// plain ones, so archived rows keep the values they had (a generated column would be
/// recomputed, an identity would hand out its own numbers).
pub fn create_archive_table_sql(archive: &str, source: &str) -> String {
    format!(
        "CREATE TABLE {archive} (LIKE {source} INCLUDING ALL EXCLUDING IDENTITY EXCLUDING GENERATED)"
    )
}

pub fn create_schema_sql(schema: &str) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", sql::ident(schema))
}

/// Columns of `archive_log` (name, type) — also what an existing one must have.
pub const LOG_COLUMNS: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("run_id", "text"),
    ("table_name", "text"),
    ("archive_table", "text"),
    ("mode", "text"),
    ("cutoff", "text"),
    ("older_than", "text"),
    ("rows_moved", "bigint"),
    ("partitions_moved", "integer"),
    ("moved_partitions", "text[]"),
    ("batches", "integer"),
    ("host", "text"),
    ("started", "timestamp with time zone"),
    ("finished", "timestamp with time zone"),
    ("status", "text"),
    ("error", "text"),
];

/// The audit table, one row per (run, table).
pub fn create_log_sql(log: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {log} (\n\
         \x20   id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n\
         \x20   run_id text NOT NULL,\n\
         \x20   table_name text NOT NULL,\n\
         \x20   archive_table text NOT NULL,\n\
         \x20   mode text NOT NULL CHECK (mode IN ('rows', 'partitions')),\n\
         \x20   cutoff text NOT NULL,\n\
         \x20   older_than text NOT NULL,\n\
         \x20   rows_moved bigint NOT NULL DEFAULT 0,\n\
         \x20   partitions_moved integer NOT NULL DEFAULT 0,\n\
         \x20   moved_partitions text[] NOT NULL DEFAULT '{{}}',\n\
         \x20   batches integer NOT NULL DEFAULT 0,\n\
         \x20   host text NOT NULL,\n\
         \x20   started timestamptz NOT NULL DEFAULT clock_timestamp(),\n\
         \x20   finished timestamptz,\n\
         \x20   status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),\n\
         \x20   error text\n\
         )"
    )
}

/// What is wrong with an existing `archive_log` (missing or retyped columns).
pub fn log_mismatches(existing: &[Column]) -> Vec<String> {
    LOG_COLUMNS
        .iter()
        .filter_map(
            |(name, ty)| match existing.iter().find(|c| c.name == *name) {
                None => Some(format!("column {name} is missing")),
                Some(c) if c.type_name != *ty => {
                    Some(format!("column {name} is {} (expected {ty})", c.type_name))
                }
                Some(_) => None,
            },
        )
        .collect()
}

/// Why an existing archive table cannot take the source's rows unchanged. Extra nullable
/// archive columns are fine (a column dropped from the source keeps its archived values).
pub fn column_mismatches(source: &[Column], archive: &[Column], archive_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in source {
        match archive.iter().find(|a| a.name == s.name) {
            None => out.push(format!(
                "column {} ({}) is missing; add it: ALTER TABLE {archive_name} ADD COLUMN {} {}",
                s.name,
                s.type_name,
                sql::ident(&s.name),
                s.type_name
            )),
            Some(a) if a.type_name != s.type_name => out.push(format!(
                "column {} is {} in the source but {} in the archive table",
                s.name, s.type_name, a.type_name
            )),
            Some(a) if a.generated => out.push(format!(
                "column {} is generated in the archive table, so archived values would be recomputed; make it a plain column",
                a.name
            )),
            Some(_) => {}
        }
    }
    for a in archive {
        if !source.iter().any(|s| s.name == a.name) && a.not_null && !a.has_default && !a.identity {
            out.push(format!(
                "column {} exists only in the archive table and is NOT NULL without a default, so inserts would fail",
                a.name
            ));
        }
    }
    out
}

/// What partitions mode does with one direct partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Its whole range is older than the cutoff: detach and move to the archive schema.
    Move,
    /// Whole range old, but it is itself partitioned: `SET SCHEMA` would leave its
    /// partitions behind, so it is reported instead.
    SubPartitioned,
    /// Part of its range is older than the cutoff: left to rows mode.
    Straddles,
    /// Nothing in it is older than the cutoff.
    Newer,
    /// The default partition: may hold old rows, left to rows mode.
    Default,
}

pub fn fate(range: Option<Range>, is_default: bool, partitioned: bool, cutoff: Pos) -> Fate {
    match range {
        _ if is_default => Fate::Default,
        None => Fate::Straddles,
        Some(r) if r.entirely_below(cutoff) && partitioned => Fate::SubPartitioned,
        Some(r) if r.entirely_below(cutoff) => Fate::Move,
        Some(r) if r.from < cutoff => Fate::Straddles,
        Some(_) => Fate::Newer,
    }
}

/// Detach one partition and move it into the archive schema, counting it in the log.
pub fn move_partition_sql(
    parent: &str,
    part: &str,
    part_name: &str,
    archive_schema: &str,
    log: &str,
    log_id: i64,
) -> String {
    format!(
        "ALTER TABLE {parent} DETACH PARTITION {part};\n\
         ALTER TABLE {part} SET SCHEMA {schema};\n\
         UPDATE {log} SET partitions_moved = partitions_moved + 1, moved_partitions = array_append(moved_partitions, {display}) WHERE id = {log_id}",
        schema = sql::ident(archive_schema),
        display = sql::literal(&format!("{archive_schema}.{part_name}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            type_oid: 0,
            not_null: false,
            generated: false,
            identity: false,
            has_default: false,
        }
    }

    #[test]
    fn partition_fates() {
        let at = |a: i64, b: i64| {
            Some(Range {
                from: Pos::At(a),
                to: Pos::At(b),
            })
        };
        let cutoff = Pos::At(100);
        // (range, default, partitioned, fate)
        let cases = [
            (at(0, 50), false, false, Fate::Move),
            (at(50, 100), false, false, Fate::Move),
            (
                Some(Range {
                    from: Pos::Min,
                    to: Pos::At(100),
                }),
                false,
                false,
                Fate::Move,
            ),
            (at(50, 100), false, true, Fate::SubPartitioned),
            (at(50, 101), false, false, Fate::Straddles),
            (
                Some(Range {
                    from: Pos::At(0),
                    to: Pos::Max,
                }),
                false,
                false,
                Fate::Straddles,
            ),
            (at(100, 200), false, false, Fate::Newer),
            (None, true, false, Fate::Default),
        ];
        for (range, default, partitioned, want) in cases {
            assert_eq!(fate(range, default, partitioned, cutoff), want, "{range:?}");
        }
    }

    #[test]
    fn column_checks() {
        let src = vec![
            col("id", "bigint"),
            col("created_at", "timestamp with time zone"),
            col("v", "text"),
        ];
        assert!(column_mismatches(&src, &src, "a.t").is_empty());
        let mut extra_nullable = src.clone();
        extra_nullable.push(col("old", "text"));
        assert!(column_mismatches(&src, &extra_nullable, "a.t").is_empty());

        let mut arch = vec![
            col("id", "integer"),
            col("created_at", "timestamp with time zone"),
        ];
        arch.push(Column {
            generated: true,
            ..col("v", "text")
        });
        arch.push(Column {
            not_null: true,
            ..col("must", "int")
        });
        let problems = column_mismatches(&src, &arch, "a.t");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("id is bigint in the source but integer"),
            "{problems:?}"
        );
        assert!(problems[1].contains("v is generated"), "{problems:?}");
        assert!(
            problems[2].contains("must exists only in the archive table"),
            "{problems:?}"
        );

        let missing = column_mismatches(&src, &src[..2], "\"a\".\"t\"");
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].contains("ALTER TABLE \"a\".\"t\" ADD COLUMN \"v\" text"),
            "{missing:?}"
        );
    }

    #[test]
    fn log_layout_is_checked() {
        let good: Vec<Column> = LOG_COLUMNS.iter().map(|(n, t)| col(n, t)).collect();
        assert!(log_mismatches(&good).is_empty());
        let bad = vec![col("id", "integer"), col("table_name", "text")];
        let m = log_mismatches(&bad);
        assert!(
            m.iter()
                .any(|s| s == "column id is integer (expected bigint)"),
            "{m:?}"
        );
        assert!(m.iter().any(|s| s == "column run_id is missing"), "{m:?}");
    }

    #[test]
    fn batch_sql_by_cursor() {
        let cols = vec!["id".to_string(), "created_at".to_string()];
        let idx = Cursor::Index {
            index: "t_created_at_idx".into(),
        };
        let mut b = Batch {
            leaf: "\"public\".\"t\"",
            archive: "\"archive\".\"t\"",
            columns: &cols,
            column: "created_at",
            key: KeyType::Timestamptz,
            cutoff: "2025-05-22 10:00:00+00",
            limit: 5000,
            cursor: &idx,
            after: None,
            log: "\"archive\".\"archive_log\"",
            log_id: 7,
        };
        let first = batch_sql(&b);
        assert!(first.contains("WHERE \"created_at\" < '2025-05-22 10:00:00+00'::timestamptz ORDER BY \"created_at\" LIMIT 5000"), "{first}");
        assert!(
            first.contains(
                "INSERT INTO \"archive\".\"t\" (\"id\", \"created_at\") OVERRIDING SYSTEM VALUE"
            ),
            "{first}"
        );
        assert!(first.contains("WHERE id = 7"), "{first}");
        assert!(first.contains("max(\"created_at\")::text"), "{first}");
        b.after = Some("2024-01-01 00:00:00+00");
        assert!(batch_sql(&b)
            .contains("AND \"created_at\" >= '2024-01-01 00:00:00+00'::timestamptz ORDER BY"));
        let phys = Cursor::Physical;
        b.cursor = &phys;
        b.after = Some("(12,4)");
        let s = batch_sql(&b);
        assert!(s.contains("AND ctid > '(12,4)'::tid LIMIT 5000"), "{s}");
        assert!(!s.contains("ORDER BY"), "{s}");
        assert!(batch_settings(&phys).contains("enable_indexscan = off"));
        assert_eq!(
            transaction_text(&["SET LOCAL x = 1", "", "SELECT 1"]),
            "BEGIN;\nSET LOCAL x = 1;\nSELECT 1;\nCOMMIT"
        );
    }

    #[test]
    fn move_partition_sql_is_quoted() {
        let s = move_partition_sql(
            "\"public\".\"t\"",
            "\"public\".\"t_2024_01\"",
            "t_2024_01",
            "archive",
            "\"archive\".\"archive_log\"",
            3,
        );
        assert_eq!(
            s,
            "ALTER TABLE \"public\".\"t\" DETACH PARTITION \"public\".\"t_2024_01\";\n\
             ALTER TABLE \"public\".\"t_2024_01\" SET SCHEMA \"archive\";\n\
             UPDATE \"archive\".\"archive_log\" SET partitions_moved = partitions_moved + 1, moved_partitions = array_append(moved_partitions, 'archive.t_2024_01') WHERE id = 3"
        );
    }
}
