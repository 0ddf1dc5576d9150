//! What `backupctl partitions` does for one table: a pure function of the policy, the
//! clock and the catalog's partitions.
//!
//! For each wanted month: a partition with exactly its bounds exists (whatever its name)
//! → nothing to do; a wider partition covers it → respected; a partition overlaps part of
//! it → reported, never duplicated; another relation already has the name → reported;
//! otherwise → create `<table>_YYYY_MM`. Whether the default partition already holds rows
//! of a month to create is I/O and decided by the caller (the month is then "blocked").

use std::collections::BTreeSet;

use chrono_tz::Tz;
use serde::Serialize;

use super::bounds::{Pos, Range};
use super::calendar::{month_range, KeyType, Month, MonthRange};
use crate::pg::sql;

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer names are truncated.
pub const MAX_IDENT_BYTES: usize = 63;

/// A partition of the table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Existing {
    /// `schema.name`, for reports.
    pub display: String,
    /// Its bound expression as `pg_get_expr` prints it.
    pub bound: String,
    /// `None` for the default partition and for bounds that are not a single-column range.
    pub range: Option<Range>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MonthState {
    /// A partition with exactly these bounds exists (possibly under another name).
    Exists { partition: String },
    /// A wider partition already holds the whole month.
    Covered { partition: String, bound: String },
    /// Existing partitions overlap part of the month: it cannot be created as a month.
    Overlap { partitions: Vec<String> },
    /// Another relation already has the partition's name.
    NameTaken,
    /// Missing: to be created.
    Create,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonthPlan {
    #[serde(serialize_with = "month_label")]
    pub month: Month,
    /// Partition name (without schema).
    pub name: String,
    pub range: MonthRange,
    #[serde(flatten)]
    pub state: MonthState,
}

fn month_label<S: serde::Serializer>(m: &Month, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.label())
}

/// `<table>_YYYY_MM`, refused when PostgreSQL would truncate it.
pub fn partition_name(table: &str, month: Month) -> Result<String, String> {
    let name = format!("{table}_{}", month.suffix());
    if name.len() > MAX_IDENT_BYTES {
        return Err(format!(
            "partition name {name:?} is longer than {MAX_IDENT_BYTES} bytes and PostgreSQL would truncate it; \
             rename the table or manage its partitions by hand"
        ));
    }
    Ok(name)
}

/// Decide every wanted month. `taken` holds the names (in the parent's schema) of
/// relations that already exist among the candidate names.
pub fn plan_months(
    months: &[Month],
    key: KeyType,
    tz: Tz,
    table: &str,
    existing: &[Existing],
    taken: &BTreeSet<String>,
) -> Result<Vec<MonthPlan>, String> {
    months
        .iter()
        .map(|&month| {
            let name = partition_name(table, month)?;
            let range = month_range(month, key, tz);
            let want = Range {
                from: Pos::At(range.from.micros),
                to: Pos::At(range.to.micros),
            };
            let with_range = || existing.iter().filter_map(|e| e.range.map(|r| (e, r)));
            let state = if let Some((e, _)) = with_range().find(|(_, r)| *r == want) {
                MonthState::Exists {
                    partition: e.display.clone(),
                }
            } else if let Some((e, _)) = with_range().find(|(_, r)| r.contains(&want)) {
                MonthState::Covered {
                    partition: e.display.clone(),
                    bound: e.bound.clone(),
                }
            } else {
                let overlapping: Vec<String> = with_range()
                    .filter(|(_, r)| r.overlaps(&want))
                    .map(|(e, _)| e.display.clone())
                    .collect();
                if !overlapping.is_empty() {
                    MonthState::Overlap {
                        partitions: overlapping,
                    }
                } else if taken.contains(&name) {
                    MonthState::NameTaken
                } else {
                    MonthState::Create
                }
            };
            Ok(MonthPlan {
                month,
                name,
                range,
                state,
            })
        })
        .collect()
}

/// `FOR VALUES FROM ('…') TO ('…')`.
pub fn bound_clause(range: &MonthRange) -> String {
    format!(
        "FOR VALUES FROM ({}) TO ({})",
        sql::literal(&range.from.literal),
        sql::literal(&range.to.literal)
    )
}

/// The statement that creates one month's partition.
pub fn create_sql(schema: &str, parent: &str, name: &str, range: &MonthRange) -> String {
    format!(
        "CREATE TABLE {} PARTITION OF {} {}",
        sql::qualified(schema, name),
        sql::qualified(schema, parent),
        bound_clause(range)
    )
}

/// What an operator runs to create a month whose rows already sit in the default
/// partition: a standalone table takes the rows, then is attached. One transaction, so a
/// failure leaves everything as it was. `columns` are the parent's non-generated columns.
#[allow(clippy::too_many_arguments)]
pub fn resolve_blocked_sql(
    schema: &str,
    parent: &str,
    default_schema: &str,
    default_name: &str,
    name: &str,
    key_column: &str,
    key: KeyType,
    range: &MonthRange,
    columns: &[String],
) -> String {
    let new = sql::qualified(schema, name);
    let cols = sql::ident_list(columns);
    let ty = key.sql();
    format!(
        "BEGIN;\n\
         CREATE TABLE {new} (LIKE {parent_q} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS INCLUDING STORAGE);\n\
         WITH moved AS (DELETE FROM {default_q} WHERE {col} >= {from}::{ty} AND {col} < {to}::{ty} RETURNING *)\n  \
         INSERT INTO {new} ({cols}) SELECT {cols} FROM moved;\n\
         ALTER TABLE {parent_q} ATTACH PARTITION {new} {bound};\n\
         COMMIT;",
        parent_q = sql::qualified(schema, parent),
        default_q = sql::qualified(default_schema, default_name),
        col = sql::ident(key_column),
        from = sql::literal(&range.from.literal),
        to = sql::literal(&range.to.literal),
        bound = bound_clause(range),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::calendar::wanted_months;
    use chrono::{DateTime, Utc};

    fn now(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn existing(name: &str, key: KeyType, from: Month, to: Month) -> Existing {
        let tz: Tz = "UTC".parse().unwrap();
        let a = month_range(from, key, tz);
        let b = month_range(to, key, tz);
        Existing {
            display: format!("public.{name}"),
            bound: format!(
                "FOR VALUES FROM ('{}') TO ('{}')",
                a.from.literal, b.from.literal
            ),
            range: Some(Range {
                from: Pos::At(a.from.micros),
                to: Pos::At(b.from.micros),
            }),
        }
    }

    const fn m(year: i32, month: u32) -> Month {
        Month { year, month }
    }

    #[test]
    fn each_month_gets_the_right_state() {
        let utc: Tz = "UTC".parse().unwrap();
        let key = KeyType::Date;
        let day = 86_400_000_000i64;
        let start = |month: Month| month_range(month, key, utc).from.micros;
        let span = |display: &str, from: i64, to: i64| Existing {
            display: format!("public.{display}"),
            bound: format!("bound of {display}"),
            range: Some(Range {
                from: Pos::At(from),
                to: Pos::At(to),
            }),
        };
        let months = wanted_months(now("2026-01-31T12:00:00Z"), utc, 5);
        let ex = vec![
            // January exists under another name.
            existing("usage_jan", key, m(2026, 1), m(2026, 2)),
            // 1 March to 15 April covers March and overlaps April.
            span(
                "usage_spring",
                start(m(2026, 3)),
                start(m(2026, 4)) + 14 * day,
            ),
            // 15 April to 15 May overlaps April and May.
            span(
                "usage_odd",
                start(m(2026, 4)) + 14 * day,
                start(m(2026, 5)) + 14 * day,
            ),
            Existing {
                display: "public.usage_default".into(),
                bound: "DEFAULT".into(),
                range: None,
            },
        ];
        let taken: BTreeSet<String> = ["usage_2026_06".to_string()].into();
        let plan = plan_months(&months, key, utc, "usage", &ex, &taken).unwrap();
        let got: Vec<(String, &str, MonthState)> = plan
            .iter()
            .map(|p| (p.month.label(), p.name.as_str(), p.state.clone()))
            .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(
            got,
            vec![
                (
                    s("2026-01"),
                    "usage_2026_01",
                    MonthState::Exists {
                        partition: s("public.usage_jan")
                    }
                ),
                (s("2026-02"), "usage_2026_02", MonthState::Create),
                (
                    s("2026-03"),
                    "usage_2026_03",
                    MonthState::Covered {
                        partition: s("public.usage_spring"),
                        bound: s("bound of usage_spring")
                    }
                ),
                (
                    s("2026-04"),
                    "usage_2026_04",
                    MonthState::Overlap {
                        partitions: vec![s("public.usage_spring"), s("public.usage_odd")]
                    }
                ),
                (
                    s("2026-05"),
                    "usage_2026_05",
                    MonthState::Overlap {
                        partitions: vec![s("public.usage_odd")]
                    }
                ),
                (s("2026-06"), "usage_2026_06", MonthState::NameTaken),
            ]
        );
    }

    #[test]
    fn rerun_after_creation_is_all_exists() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let key = KeyType::Timestamptz;
        let months = wanted_months(now("2026-03-29T01:30:00Z"), tz, 3);
        let first = plan_months(&months, key, tz, "t", &[], &BTreeSet::new()).unwrap();
        assert!(first.iter().all(|p| p.state == MonthState::Create));
        let created: Vec<Existing> = first
            .iter()
            .map(|p| Existing {
                display: format!("public.{}", p.name),
                bound: bound_clause(&p.range),
                range: Some(Range {
                    from: Pos::At(p.range.from.micros),
                    to: Pos::At(p.range.to.micros),
                }),
            })
            .collect();
        let names: BTreeSet<String> = first.iter().map(|p| p.name.clone()).collect();
        let second = plan_months(&months, key, tz, "t", &created, &names).unwrap();
        assert!(
            second
                .iter()
                .all(|p| matches!(p.state, MonthState::Exists { .. })),
            "{second:?}"
        );
    }

    #[test]
    fn sql_is_quoted() {
        let tz: Tz = "UTC".parse().unwrap();
        let r = month_range(m(2026, 1), KeyType::Date, tz);
        assert_eq!(
            create_sql("public", "Usage Stats", "Usage Stats_2026_01", &r),
            "CREATE TABLE \"public\".\"Usage Stats_2026_01\" PARTITION OF \"public\".\"Usage Stats\" \
             FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')"
        );
        let fix = resolve_blocked_sql(
            "public",
            "t",
            "public",
            "t_default",
            "t_2026_01",
            "created_at",
            KeyType::Date,
            &r,
            &["id".into(), "created_at".into()],
        );
        assert!(
            fix.contains(
                "DELETE FROM \"public\".\"t_default\" WHERE \"created_at\" >= '2026-01-01'::date"
            ),
            "{fix}"
        );
        assert!(fix.contains("ATTACH PARTITION \"public\".\"t_2026_01\" FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')"), "{fix}");
    }

    #[test]
    fn names_that_would_be_truncated_are_refused() {
        let long = "x".repeat(56);
        assert!(partition_name(&long, m(2026, 1)).is_err());
        assert_eq!(
            partition_name(&"x".repeat(55), m(2026, 1)).unwrap().len(),
            63
        );
    }
}
