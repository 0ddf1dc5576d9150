//! The audit hook: a policy's `audit_sql`, run in the same transaction that closes the
//! run's `archive_log` row, so a team's own audit table records every run exactly when
//! `archive_log` does (both commit, or neither).
//!
//! The statement names the run's values as `{placeholders}`. They are never pasted into
//! the SQL: each becomes a typed parameter (`$n::type`), so table names or error texts
//! with quotes cannot change the statement. Placeholders inside single-quoted literals
//! are left alone; an unknown one is refused with the list of known ones.

use tokio_postgres::types::ToSql;

/// The values a statement may name: (placeholder, SQL type, meaning).
pub const VALUES: &[(&str, &str, &str)] = &[
    ("table", "text", "source table, schema.name"),
    (
        "archive_table",
        "text",
        "table or schema the rows or partitions moved into",
    ),
    (
        "cutoff",
        "text",
        "rows with column < cutoff were archived (the column's type as text)",
    ),
    ("older_than", "text", "the policy's interval"),
    ("mode", "text", "rows or partitions"),
    ("rows_moved", "bigint", "rows moved by this run"),
    (
        "partitions_moved",
        "integer",
        "partitions moved by this run",
    ),
    ("run_id", "text", "id of the archive run"),
    ("log_id", "bigint", "id of the run's archive_log row"),
    (
        "started",
        "timestamptz",
        "when the run of this table started",
    ),
    ("finished", "timestamptz", "when it finished"),
    ("status", "text", "finished or failed"),
    ("error", "text", "why it failed (NULL when finished)"),
    ("database", "text", "database of the table"),
    ("host", "text", "host that ran it"),
];

/// An `audit_sql` with its placeholders turned into parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The statement with `$n::type` in place of each placeholder.
    pub sql: String,
    /// Placeholder name of `$1`, `$2`, …
    pub params: Vec<&'static str>,
    /// The policy's database, the one value `archive_log` does not hold.
    pub database: String,
}

/// Turn `{name}` placeholders (outside single-quoted literals) into typed parameters.
pub fn render(sql: &str, database: &str) -> Result<Audit, String> {
    let mut out = String::with_capacity(sql.len());
    let mut params: Vec<&'static str> = Vec::new();
    let mut in_literal = false;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        if c == '\'' {
            in_literal = !in_literal;
        } else if c == '{' && !in_literal {
            let name_len = rest[1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len() - 1);
            if name_len > 0 && rest[1 + name_len..].starts_with('}') {
                let name = &rest[1..1 + name_len];
                let Some((known, ty, _)) = VALUES.iter().find(|(n, _, _)| *n == name) else {
                    let known: Vec<String> =
                        VALUES.iter().map(|(n, _, _)| format!("{{{n}}}")).collect();
                    return Err(format!(
                        "unknown placeholder {{{name}}}; the known ones are {}",
                        known.join(", ")
                    ));
                };
                let index = match params.iter().position(|p| p == known) {
                    Some(i) => i + 1,
                    None => {
                        params.push(known);
                        params.len()
                    }
                };
                out.push_str(&format!("${index}::{ty}"));
                rest = &rest[2 + name_len..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if sql.trim().is_empty() {
        return Err(
            "is empty; write the statement to run, e.g. INSERT INTO audit_log.system_log …".into(),
        );
    }
    Ok(Audit {
        sql: out,
        params,
        database: database.to_string(),
    })
}

/// The run's values, as `archive_log` holds them when the row is closed.
pub struct RunValues {
    pub table: String,
    pub archive_table: String,
    pub cutoff: String,
    pub older_than: String,
    pub mode: String,
    pub rows_moved: i64,
    pub partitions_moved: i32,
    pub run_id: String,
    pub log_id: i64,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
    pub status: String,
    pub error: Option<String>,
    pub host: String,
}

/// Render `text` (the policy's `audit_sql`, config key `key`) and have PostgreSQL
/// prepare it — parse it, resolve its tables and columns, type its parameters — so a
/// broken statement is refused (the `Err` text) before anything moves.
pub async fn check(
    client: &tokio_postgres::Client,
    key: &str,
    database: &str,
    text: &str,
) -> Result<Audit, String> {
    let a = render(text, database).map_err(|e| format!("key `{key}`: {e}"))?;
    client.prepare(&a.sql).await.map_err(|e| {
        format!(
            "key `{key}`: the statement does not prepare in database {database}: {}",
            crate::partitions::catalog::pg_message(&e)
        )
    })?;
    Ok(a)
}

impl Audit {
    /// The statement as `--dry-run` shows it, with what each parameter stands for.
    pub fn plan_text(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, n)| format!("${} = {{{n}}}", i + 1))
            .collect();
        format!(
            "-- audit_sql, in the transaction that closes the archive_log row ({}):\n{}",
            params.join(", "),
            self.sql
        )
    }

    /// The parameters of one run, in `$n` order.
    pub fn bind<'a>(&'a self, v: &'a RunValues) -> Vec<&'a (dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| -> &(dyn ToSql + Sync) {
                match *p {
                    "table" => &v.table,
                    "archive_table" => &v.archive_table,
                    "cutoff" => &v.cutoff,
                    "older_than" => &v.older_than,
                    "mode" => &v.mode,
                    "rows_moved" => &v.rows_moved,
                    "partitions_moved" => &v.partitions_moved,
                    "run_id" => &v.run_id,
                    "log_id" => &v.log_id,
                    "started" => &v.started,
                    "finished" => &v.finished,
                    "status" => &v.status,
                    "error" => &v.error,
                    "database" => &self.database,
                    "host" => &v.host,
                    other => unreachable!("placeholder {other} is in VALUES but not bound"),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_typed_parameters() {
        let a = render(
            "INSERT INTO audit_log.system_log (event, detail, rows, at) \
             VALUES ('archive {table}', {table} || ' → ' || {archive_table}, {rows_moved}, {finished})",
            "app",
        )
        .unwrap();
        assert_eq!(
            a.sql,
            "INSERT INTO audit_log.system_log (event, detail, rows, at) \
             VALUES ('archive {table}', $1::text || ' → ' || $2::text, $3::bigint, $4::timestamptz)"
        );
        assert_eq!(
            a.params,
            ["table", "archive_table", "rows_moved", "finished"]
        );
        // JSON in a literal, a doubled quote, and braces that are not placeholders.
        let a = render(
            "SELECT '{\"a\": 1}'::jsonb, 'it''s {run_id}', {run_id}, '{}', ARRAY[1]::int[]",
            "d",
        )
        .unwrap();
        assert_eq!(
            a.sql,
            "SELECT '{\"a\": 1}'::jsonb, 'it''s {run_id}', $1::text, '{}', ARRAY[1]::int[]"
        );
        let e = render("SELECT {tabel}", "d").unwrap_err();
        assert!(e.contains("unknown placeholder {tabel}"), "{e}");
        assert!(e.contains("{table}"), "{e}");
        assert!(render("  ", "d").is_err());
    }

    #[test]
    fn every_value_binds() {
        let all: String = VALUES
            .iter()
            .map(|(n, _, _)| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let a = render(&format!("SELECT {all}"), "db").unwrap();
        let v = RunValues {
            table: "public.t".into(),
            archive_table: "archive.t".into(),
            cutoff: "2026-06-01".into(),
            older_than: "6 months".into(),
            mode: "rows".into(),
            rows_moved: 1,
            partitions_moved: 0,
            run_id: "r".into(),
            log_id: 1,
            started: chrono::Utc::now(),
            finished: None,
            status: "finished".into(),
            error: None,
            host: "h".into(),
        };
        assert_eq!(a.bind(&v).len(), VALUES.len());
    }
}
