//! The report of an `archive` run: per policy what was checked, planned and moved, the
//! exit-code rule, and the human rendering. The daemon stores and logs the same struct.

use serde::Serialize;

use super::inspect::Leaf;
use super::partmode::PartitionReport;
use super::plan::Cursor;
use super::rows::RowStats;
use crate::config::{ArchiveMode, ArchivePolicy};
use crate::error::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    Finished,
    DryRun,
    Refused,
    Failed,
}

#[derive(Debug, Serialize)]
pub struct TableArchive {
    /// As configured.
    pub table: String,
    /// Resolved `schema.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub database: String,
    pub mode: &'static str,
    pub column: String,
    pub older_than: String,
    /// Rows with `column < cutoff` are archived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<String>,
    pub archive_schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_table: Option<String>,
    pub status: TableStatus,
    /// Planner's estimate of the rows to move (rows mode) or in the partitions to move.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowStats>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<Leaf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionReport>,
    pub partitions_moved: usize,
    pub foreign_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The statements, in order (batches: the first of each leaf).
    pub sql: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ArchiveSummary {
    pub dry_run: bool,
    pub run_id: String,
    pub tables: Vec<TableArchive>,
}

impl ArchiveSummary {
    /// `Ok` when every policy finished (or would run); else exit 1 for failures, 2 when
    /// only refusals (config, foreign keys, mismatched archive table) stand in the way.
    pub fn outcome(&self) -> anyhow::Result<()> {
        let failed: Vec<&str> = self
            .tables
            .iter()
            .filter(|t| t.status == TableStatus::Failed)
            .map(|t| t.table.as_str())
            .collect();
        let refused: Vec<&str> = self
            .tables
            .iter()
            .filter(|t| t.status == TableStatus::Refused)
            .map(|t| t.table.as_str())
            .collect();
        if failed.is_empty() && refused.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !failed.is_empty() {
            parts.push(format!("failed: {}", failed.join(", ")));
        }
        if !refused.is_empty() {
            parts.push(format!("refused: {}", refused.join(", ")));
        }
        Err(Exit {
            code: if failed.is_empty() { 2 } else { 1 },
            message: Some(format!(
                "archive: {}; see the report above",
                parts.join("; ")
            )),
        }
        .into())
    }
}

impl TableArchive {
    pub(crate) fn new(p: &ArchivePolicy, db: &str, dry_run: bool) -> TableArchive {
        TableArchive {
            table: p.table.clone(),
            source: None,
            database: db.to_string(),
            mode: match p.mode {
                ArchiveMode::Rows => "rows",
                ArchiveMode::Partitions => "partitions",
            },
            column: p.column.clone(),
            older_than: p.older_than.clone(),
            cutoff: None,
            archive_schema: p.archive_schema.clone(),
            archive_table: None,
            status: if dry_run {
                TableStatus::DryRun
            } else {
                TableStatus::Finished
            },
            estimated_rows: None,
            rows: None,
            leaves: Vec::new(),
            partitions: Vec::new(),
            partitions_moved: 0,
            foreign_keys: Vec::new(),
            notes: Vec::new(),
            sql: Vec::new(),
            log_id: None,
            error: None,
        }
    }
}

/// The report for a terminal.
pub fn print_human(s: &ArchiveSummary) {
    if s.tables.is_empty() {
        println!("no [[archive]] policies in the config");
    }
    for t in &s.tables {
        let target = t
            .archive_table
            .clone()
            .unwrap_or_else(|| format!("schema {}", t.archive_schema));
        println!(
            "{} → {} ({} mode, database {})",
            t.source.as_deref().unwrap_or(&t.table),
            target,
            t.mode,
            t.database
        );
        if let Some(c) = &t.cutoff {
            println!("  cutoff: {} < {c} (now - {})", t.column, t.older_than);
        }
        if !t.foreign_keys.is_empty() {
            println!("  foreign keys referencing it:");
            for fk in &t.foreign_keys {
                println!("    {fk}");
            }
        }
        for n in &t.notes {
            println!("  note: {n}");
        }
        for l in &t.leaves {
            let cursor = match &l.cursor {
                Cursor::Index { index } => format!("index {index}"),
                Cursor::Physical => "physical order (no index leads with the column)".into(),
            };
            println!(
                "  {}: ~{} row(s) older than the cutoff, walked in {cursor}",
                l.table, l.estimated_rows
            );
        }
        for q in &t.partitions {
            let status = serde_json::to_value(q.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            println!(
                "  {:<40} {:<10} ~{} row(s)  {}",
                q.partition, status, q.estimated_rows, q.bound
            );
            if let Some(d) = &q.detail {
                println!("      {d}");
            }
        }
        if let Some(st) = &t.rows {
            println!(
                "  moved {} row(s) in {} batch(es) in {:.1} s ({:.0} rows/s); longest batch {:.0} ms",
                st.rows_moved,
                st.batches,
                st.elapsed_ms / 1e3,
                st.rows_per_second,
                st.longest_batch_ms
            );
        }
        if t.mode == "partitions" && !s.dry_run && t.log_id.is_some() {
            println!("  moved {} partition(s)", t.partitions_moved);
        }
        if let Some(id) = t.log_id {
            println!(
                "  {}.archive_log id {id}, run {}",
                t.archive_schema, s.run_id
            );
        }
        if s.dry_run {
            if let Some(n) = t.estimated_rows {
                println!("  estimated rows to move: {n}");
            }
            if !t.sql.is_empty() {
                println!("  SQL:");
                for stmt in &t.sql {
                    for line in format!("{stmt};").lines() {
                        println!("    {line}");
                    }
                }
                if t.mode == "rows" {
                    println!("    -- each batch repeats with the cursor after the last row moved (index value or ctid)");
                    println!("    -- until a pass from the start finds nothing; archive_log id 0 is this run's row");
                }
            }
        }
        if let Some(e) = &t.error {
            println!(
                "  {}: {e}",
                if t.status == TableStatus::Refused {
                    "REFUSED"
                } else {
                    "FAILED"
                }
            );
        }
        let status = serde_json::to_value(t.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("  status: {status}");
    }
    if s.dry_run {
        println!("dry run: nothing was changed");
    }
}
