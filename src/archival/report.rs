//! The report of an `archive` run: per policy what was checked, planned and moved, the
//! exit-code rule, and the human rendering. The daemon stores and logs the same struct.

use serde::Serialize;

use super::count::Analyzed;
use super::inspect::Leaf;
use super::partmode::PartitionReport;
use super::rows::RowStats;
use crate::config::{ArchiveMode, ArchivePolicy};
use crate::error::{Reported, UserError};

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
    /// How the cutoff was computed (`now() - 6 months, rounded down to the day in …`).
    pub cutoff_rule: String,
    pub archive_schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_table: Option<String>,
    pub status: TableStatus,
    /// Planner's estimate of the rows to move (rows mode) or in the partitions to move.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<i64>,
    /// When the statistics behind `estimated_rows` were gathered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analyzed: Option<Analyzed>,
    /// The rows to move, counted (`archive --dry-run --exact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_rows: Option<i64>,
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
    /// `export_after`: what was (would be) exported to the repository and dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exports: Option<super::export::PolicyExports>,
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
        let message = format!("archive: {}; see the report above", parts.join("; "));
        Err(if failed.is_empty() {
            UserError::new(message).into()
        } else {
            Reported::new(message).into()
        })
    }
}

impl ArchiveSummary {
    /// The real causes behind [`ArchiveSummary::outcome`]'s error, one line per table
    /// that failed or was refused (its error, with the partitions or exports that
    /// failed). For those who never saw the rendered report.
    pub fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self
            .tables
            .iter()
            .filter(|t| matches!(t.status, TableStatus::Failed | TableStatus::Refused))
        {
            let what = if t.status == TableStatus::Refused {
                "refused"
            } else {
                "failed"
            };
            let mut line = format!("{} (database {}) {what}", t.table, t.database);
            if let Some(e) = &t.error {
                line.push_str(&format!(": {e}"));
            }
            for p in t.partitions.iter().filter(|p| {
                matches!(
                    p.status,
                    super::partmode::PartStatus::Failed | super::partmode::PartStatus::NameTaken
                )
            }) {
                line.push_str(&format!(
                    "; {}: {}",
                    p.partition,
                    p.detail.as_deref().unwrap_or("not moved")
                ));
            }
            for i in t
                .exports
                .iter()
                .flat_map(|x| &x.items)
                .filter(|i| i.status == super::export::ExportStatus::Failed)
            {
                line.push_str(&format!(
                    "; export of {}{}: {}",
                    i.relation,
                    i.month
                        .as_deref()
                        .map(|m| format!(" {m}"))
                        .unwrap_or_default(),
                    i.detail.as_deref().unwrap_or("failed")
                ));
            }
            out.push(line);
        }
        out
    }

    /// Whether every problem is a refusal (config, foreign keys, mismatched archive
    /// table): retrying the same run is refused the same way.
    pub fn operator_only(&self) -> bool {
        !self.tables.iter().any(|t| t.status == TableStatus::Failed)
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
            cutoff_rule: super::inspect::cutoff_rule(p),
            archive_schema: p.archive_schema.clone(),
            archive_table: None,
            status: if dry_run {
                TableStatus::DryRun
            } else {
                TableStatus::Finished
            },
            estimated_rows: None,
            analyzed: None,
            counted_rows: None,
            rows: None,
            leaves: Vec::new(),
            partitions: Vec::new(),
            partitions_moved: 0,
            foreign_keys: Vec::new(),
            notes: Vec::new(),
            sql: Vec::new(),
            log_id: None,
            exports: None,
            error: None,
        }
    }
}
