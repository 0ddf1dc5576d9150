//! What `backupctl partitions` does for one table: a pure function of the policy, the
//! clock and the catalog's partitions.
//!
//! For each wanted month: a partition with exactly its bounds exists (whatever its name)
//! → nothing to do; a wider partition covers it → respected; a partition overlaps part of
//! it → reported, never duplicated; another relation already has the name → reported;
//! otherwise → create it, named by the policy's `name_format` (`{table}_{YYYY}_{MM}` by
//! default). Whether the default partition already holds rows of a month to create is
//! I/O and decided by the caller (the month is then "blocked").
//!
//! Past months are planned the same way: [`backfill_months`] lists every month from the
//! oldest partition's bound up to the current month, so gaps in the history are found.

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

/// The partition name `format` gives `month` of `table` (placeholders `{table}`,
/// `{YYYY}`, `{MM}`; the config checked it), refused when PostgreSQL would truncate it.
pub fn partition_name(format: &str, table: &str, month: Month) -> Result<String, String> {
    let name = format
        .replace("{table}", table)
        .replace("{YYYY}", &format!("{:04}", month.year))
        .replace("{MM}", &format!("{:02}", month.month));
    if name.len() > MAX_IDENT_BYTES {
        return Err(format!(
            "partition name {name:?} is longer than {MAX_IDENT_BYTES} bytes and PostgreSQL would truncate it; \
             shorten name_format, or rename the table"
        ));
    }
    Ok(name)
}

/// The months from the oldest bound of `existing` (the first whole month at or after
/// it) up to, not including, `before`: the past months a policy's history should have.
/// Empty when no partition has a finite range bound.
pub fn backfill_months(existing: &[Existing], key: KeyType, tz: Tz, before: Month) -> Vec<Month> {
    let oldest = existing
        .iter()
        .filter_map(|e| e.range)
        .flat_map(|r| [r.from, r.to])
        .filter_map(|p| match p {
            Pos::At(us) if us != i64::MIN && us != i64::MAX => Some(us),
            _ => None,
        })
        .min();
    let Some(oldest) = oldest.and_then(|us| month_at(us, key, tz)) else {
        return Vec::new();
    };
    let mut m = oldest;
    let mut out = Vec::new();
    while m < before {
        out.push(m);
        m = m.next();
    }
    out
}

/// The first month whose start is at or after `micros` on the key's axis.
fn month_at(micros: i64, key: KeyType, tz: Tz) -> Option<Month> {
    let instant = chrono::DateTime::from_timestamp_micros(micros)?;
    let day = match key {
        KeyType::Date | KeyType::Timestamp => instant.naive_utc().date(),
        KeyType::Timestamptz => instant.with_timezone(&tz).date_naive(),
    };
    let m = Month::of(day);
    Some(if month_range(m, key, tz).from.micros < micros {
        m.next()
    } else {
        m
    })
}

/// Decide every month. `taken` holds the names (in the parent's schema) of relations
/// that already exist among the candidate names; `format` is the policy's `name_format`.
pub fn plan_months(
    months: &[Month],
    key: KeyType,
    tz: Tz,
    format: &str,
    table: &str,
    existing: &[Existing],
    taken: &BTreeSet<String>,
) -> Result<Vec<MonthPlan>, String> {
    months
        .iter()
        .map(|&month| {
            let name = partition_name(format, table, month)?;
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

    const FMT: &str = "{table}_{YYYY}_{MM}";

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
        let plan = plan_months(&months, key, utc, FMT, "usage", &ex, &taken).unwrap();
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
        let first = plan_months(&months, key, tz, FMT, "t", &[], &BTreeSet::new()).unwrap();
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
        let second = plan_months(&months, key, tz, FMT, "t", &created, &names).unwrap();
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
        assert!(partition_name(FMT, &long, m(2026, 1)).is_err());
        assert_eq!(
            partition_name(FMT, &"x".repeat(55), m(2026, 1))
                .unwrap()
                .len(),
            63
        );
    }

    #[test]
    fn name_formats() {
        // (format, table, month, name)
        let cases = [
            (FMT, "usage", m(2026, 1), "usage_2026_01"),
            (
                "usage_stats_{YYYY}_{MM}",
                "usage_stats_partitioned",
                m(2026, 12),
                "usage_stats_2026_12",
            ),
            ("{table}_y{YYYY}m{MM}", "t", m(2027, 3), "t_y2027m03"),
            ("p{YYYY}{MM}_{table}", "T x", m(2026, 10), "p202610_T x"),
        ];
        for (format, table, month, want) in cases {
            assert_eq!(partition_name(format, table, month).unwrap(), want);
        }
    }

    #[test]
    fn backfill_runs_from_the_oldest_bound_to_the_current_month() {
        let utc: Tz = "UTC".parse().unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let at = |month: Month, key: KeyType, tz: Tz| month_range(month, key, tz).from.micros;
        let part = |from: Pos, to: Pos| Existing {
            display: "p".into(),
            bound: "b".into(),
            range: Some(Range { from, to }),
        };
        let labels = |v: Vec<Month>| v.into_iter().map(Month::label).collect::<Vec<_>>();
        let month = |key: KeyType, tz: Tz, a: Month, b: Month| {
            part(Pos::At(at(a, key, tz)), Pos::At(at(b, key, tz)))
        };
        // (partitions, key, zone, current month, months wanted)
        let d = KeyType::Date;
        let tstz = KeyType::Timestamptz;
        type Case = (Vec<Existing>, KeyType, Tz, Month, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                vec![
                    month(d, utc, m(2024, 1), m(2024, 2)),
                    month(d, utc, m(2024, 2), m(2024, 3)),
                ],
                d,
                utc,
                m(2024, 6),
                vec!["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"],
            ),
            // Bounds in Berlin time for a timestamptz key.
            (
                vec![month(tstz, berlin, m(2025, 11), m(2025, 12))],
                tstz,
                berlin,
                m(2026, 2),
                vec!["2025-11", "2025-12", "2026-01"],
            ),
            // A partition starting mid-month: backfill starts at the next whole month.
            (
                vec![part(
                    Pos::At(at(m(2025, 3), d, utc) + 86_400_000_000 * 14),
                    Pos::At(at(m(2025, 4), d, utc)),
                )],
                d,
                utc,
                m(2025, 6),
                vec!["2025-04", "2025-05"],
            ),
            // MINVALUE: the history starts at its upper bound.
            (
                vec![part(Pos::Min, Pos::At(at(m(2026, 1), d, utc)))],
                d,
                utc,
                m(2026, 3),
                vec!["2026-01", "2026-02"],
            ),
            // Only newer partitions, or none, or only a default: nothing to backfill.
            (
                vec![month(d, utc, m(2026, 5), m(2026, 6))],
                d,
                utc,
                m(2026, 3),
                vec![],
            ),
            (vec![], d, utc, m(2026, 3), vec![]),
            (
                vec![Existing {
                    display: "d".into(),
                    bound: "DEFAULT".into(),
                    range: None,
                }],
                d,
                utc,
                m(2026, 3),
                vec![],
            ),
        ];
        for (existing, key, tz, now, want) in cases {
            assert_eq!(
                labels(backfill_months(&existing, key, tz, now)),
                want,
                "{key:?} {tz} {now:?}"
            );
        }
    }
}
