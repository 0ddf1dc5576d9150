//! The report of a `partitions` run: per table and month what was found and done, the
//! exit-code rule, and the human rendering. The daemon stores and logs the same struct.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::catalog::RangeKey;
use crate::config::PartitionPolicy;
use crate::error::{Reported, UserError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    WouldCreate,
    Exists,
    Covered,
    Overlap,
    NameTaken,
    Blocked,
    Failed,
    /// A past month between the oldest partition and now has no partition; not created
    /// because the policy has `backfill = false` (the SQL is in the report).
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::WouldCreate => "would_create",
            Status::Exists => "exists",
            Status::Covered => "covered",
            Status::Overlap => "overlap",
            Status::NameTaken => "name_taken",
            Status::Blocked => "blocked",
            Status::Failed => "failed",
            Status::Missing => "missing",
        }
    }

    /// Months a human has to look at.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Status::Overlap | Status::NameTaken | Status::Blocked | Status::Failed
        )
    }
}

#[derive(Debug, Serialize)]
pub struct MonthReport {
    pub month: String,
    /// A past month (between the oldest partition and now), not one `premake` wants.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// `schema.name` of the month's partition (to be) created by this policy.
    pub partition: String,
    pub from: String,
    pub to: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The statement that creates it (run, or to be run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Rows of this month in the default partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_rows: Option<i64>,
    /// SQL that moves those rows into a new partition of the month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub database: String,
    pub timezone: String,
    pub premake: u32,
    pub name_format: String,
    pub backfill: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<RangeKey>,
    pub months: Vec<MonthReport>,
    /// Why the table could not be handled at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is the config's or the table's fault (exit 2), not an operational one.
    #[serde(skip)]
    pub refused: bool,
}

#[derive(Debug, Serialize)]
pub struct PartitionsSummary {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub tables: Vec<TableReport>,
}

impl PartitionsSummary {
    /// `Ok` when every month is in place (or would be); otherwise the error `main` turns
    /// into the exit code: 2 when a policy names an unusable table, else 1.
    pub fn outcome(&self) -> anyhow::Result<()> {
        let refused = self.tables.iter().filter(|t| t.refused).count();
        let failed = self
            .tables
            .iter()
            .filter(|t| t.error.is_some() && !t.refused)
            .count();
        let attention: Vec<String> = self
            .tables
            .iter()
            .flat_map(|t| {
                t.months
                    .iter()
                    .filter(|m| m.status.needs_attention())
                    .map(move |m| (t, m))
            })
            .map(|(t, m)| format!("{} {} {}", t.table, m.month, m.status.as_str()))
            .collect();
        if failed == 0 && refused == 0 && attention.is_empty() {
            return Ok(());
        }
        let refused_only = failed == 0 && refused > 0;
        let mut parts = Vec::new();
        if refused + failed > 0 {
            parts.push(format!(
                "{} table(s) could not be handled",
                refused + failed
            ));
        }
        if !attention.is_empty() {
            parts.push(format!(
                "{} month(s) need attention ({})",
                attention.len(),
                attention.join(", ")
            ));
        }
        let message = format!("partitions: {}; see the report above", parts.join("; "));
        Err(if refused_only {
            UserError::new(message).into()
        } else {
            Reported::new(message).into()
        })
    }
}

impl PartitionsSummary {
    /// The real causes behind [`PartitionsSummary::outcome`]'s error, one line each:
    /// the table's error, or the month, its status, detail and the SQL that resolves it.
    /// For those who never saw the rendered report (the daemon's log, alerts, history).
    pub fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Some(e) = &t.error {
                out.push(format!("{} (database {}): {e}", t.table, t.database));
            }
            for m in t.months.iter().filter(|m| m.status.needs_attention()) {
                let mut line = format!("{} {} {}", t.table, m.month, m.status.as_str());
                if let Some(n) = m.default_rows {
                    line.push_str(&format!(
                        ": {n} row(s) of the month are in the default partition"
                    ));
                }
                if let Some(d) = &m.detail {
                    line.push_str(&format!(": {d}"));
                }
                if let Some(r) = &m.resolve {
                    line.push_str(&format!("; to resolve, run: {}", r.replace('\n', " ")));
                }
                out.push(line);
            }
        }
        out
    }

    /// Whether only an operator can fix what went wrong (refused tables, months blocked
    /// by rows in the default partition, overlaps, taken names): retrying the same run
    /// fails the same way.
    pub fn operator_only(&self) -> bool {
        let failed = self.tables.iter().any(|t| t.error.is_some() && !t.refused)
            || self
                .tables
                .iter()
                .flat_map(|t| &t.months)
                .any(|m| m.status == Status::Failed);
        !failed
    }
}

impl TableReport {
    pub(crate) fn new(p: &PartitionPolicy, db: &str) -> TableReport {
        TableReport {
            table: p.table.clone(),
            database: db.to_string(),
            timezone: p.timezone.clone(),
            premake: p.premake,
            name_format: p.name_format.clone(),
            backfill: p.backfill,
            key: None,
            months: Vec::new(),
            error: None,
            refused: false,
        }
    }
}
