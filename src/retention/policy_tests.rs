//! Table-driven tests of the backup retention policy.

use super::*;
use crate::manifest::LogicalInfo;
use crate::test_fixtures::{self as fixtures, database_dump, physical_info, verification};
use std::time::Duration;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

/// One backup of a test case: id, kind, start time, label, verification outcome.
#[derive(Clone, Copy)]
pub(crate) struct B {
    pub id: &'static str,
    pub kind: BackupKind,
    pub start: &'static str,
    pub label: Option<&'static str>,
    pub verified: Option<Outcome>,
}

pub(crate) const fn phys(id: &'static str, start: &'static str) -> B {
    B {
        id,
        kind: BackupKind::Physical,
        start,
        label: None,
        verified: None,
    }
}

pub(crate) const fn logi(id: &'static str, start: &'static str) -> B {
    B {
        id,
        kind: BackupKind::Logical,
        start,
        label: None,
        verified: None,
    }
}

impl B {
    pub const fn label(mut self, l: &'static str) -> B {
        self.label = Some(l);
        self
    }
    pub const fn verified(mut self, o: Outcome) -> B {
        self.verified = Some(o);
        self
    }
}

/// A manifest for `b`; physical backups start at segment `start_seg` on `tli`.
pub(crate) fn manifest_at(b: &B, tli: u32, start_seg: u64, stop_seg: u64) -> Manifest {
    let start = t(b.start);
    let mut m = fixtures::manifest(b.id, b.kind, start, start + chrono::Duration::seconds(30));
    m.label = b.label.map(str::to_string);
    m.physical = (b.kind == BackupKind::Physical).then(|| physical_info(tli, start_seg, stop_seg));
    m.logical = (b.kind == BackupKind::Logical).then(|| LogicalInfo {
        databases: vec![],
        globals_object: "globals.sql.zst".into(),
        globals_include_passwords: false,
        pg_dump_version: None,
    });
    m.verification = b
        .verified
        .map(|outcome| verification(start + chrono::Duration::hours(1), outcome, 1.0));
    m
}

fn manifest(b: &B) -> Manifest {
    manifest_at(b, 1, 2, 2)
}

fn rule(
    last: Option<u32>,
    within: Option<&str>,
    d: Option<u32>,
    w: Option<u32>,
    m: Option<u32>,
) -> RetentionRule {
    RetentionRule {
        keep_last: last,
        keep_within: within.map(|s| crate::config::parse_duration(s).unwrap()),
        keep_daily: d,
        keep_weekly: w,
        keep_monthly: m,
    }
}

fn policy(physical: RetentionRule) -> RetentionConfig {
    RetentionConfig {
        physical,
        ..RetentionConfig::default()
    }
}

fn last(n: u32) -> RetentionRule {
    rule(Some(n), None, None, None, None)
}

struct Case {
    name: &'static str,
    policy: RetentionConfig,
    now: &'static str,
    backups: Vec<B>,
    keep: &'static [&'static str],
}

fn kept(c: &Case) -> Vec<String> {
    let ms: Vec<Manifest> = c.backups.iter().map(manifest).collect();
    let out = decide(&ms, &c.policy, t(c.now));
    assert_eq!(out.len(), ms.len(), "{}: one decision per backup", c.name);
    for d in &out {
        assert!(!d.reasons.is_empty(), "{}: {} has no reason", c.name, d.id);
    }
    // Oldest first by manifest time.
    assert!(
        out.windows(2).all(|w| w[0].start_time <= w[1].start_time),
        "{}: not in time order",
        c.name
    );
    let mut k: Vec<String> = out
        .iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| d.id.clone())
        .collect();
    k.sort();
    k
}

#[test]
fn policy_table() {
    let ok = Outcome::Ok;
    let cases = vec![
        Case {
            name: "keep_last keeps the newest N",
            policy: policy(last(2)),
            now: "2026-11-30T00:00:00Z",
            backups: vec![
                phys("p1", "2026-11-20T03:00:00Z"),
                phys("p2", "2026-11-21T03:00:00Z"),
                phys("p3", "2026-11-22T03:00:00Z"),
                phys("p4", "2026-11-23T03:00:00Z"),
                phys("p5", "2026-11-24T03:00:00Z"),
            ],
            keep: &["p4", "p5"],
        },
        Case {
            name: "keep_within: exactly at the limit is kept, one second more is not",
            policy: policy(rule(None, Some("30d"), None, None, None)),
            now: "2026-12-31T03:00:00Z",
            backups: vec![
                phys("too-old", "2026-12-01T02:59:59Z"),
                phys("edge", "2026-12-01T03:00:00Z"),
                phys("young", "2026-12-30T03:00:00Z"),
            ],
            keep: &["edge", "young"],
        },
        Case {
            name: "keep_within keeps a backup dated in the future (clock skew)",
            policy: policy(rule(None, Some("1d"), None, None, None)),
            now: "2026-12-01T00:00:00Z",
            backups: vec![
                phys("old", "2026-11-01T00:00:00Z"),
                phys("future", "2026-12-01T00:00:01Z"),
                phys("newer-future", "2026-12-02T00:00:00Z"),
            ],
            keep: &["future", "newer-future"],
        },
        Case {
            name: "keep_daily: newest of each of the N newest UTC days; midnight splits days",
            policy: policy(rule(None, None, Some(3), None, None)),
            now: "2026-11-30T00:00:00Z",
            backups: vec![
                phys("d20", "2026-11-20T12:00:00Z"),
                phys("d21-early", "2026-11-21T00:00:00Z"),
                phys("d21-late", "2026-11-21T23:59:59Z"),
                phys("d22", "2026-11-22T00:00:00Z"),
                phys("d24-a", "2026-11-24T01:00:00Z"),
                phys("d24-b", "2026-11-24T02:00:00Z"),
            ],
            keep: &["d21-late", "d22", "d24-b"],
        },
        Case {
            // 2026-03-29 01:00 UTC is when Europe moves clocks forward: UTC days ignore it.
            name: "keep_daily: a DST change does not split a UTC day",
            policy: policy(rule(None, None, Some(1), None, None)),
            now: "2026-03-30T00:00:00Z",
            backups: vec![
                phys("before-dst", "2026-03-29T00:30:00Z"),
                phys("after-dst", "2026-03-29T01:30:00Z"),
            ],
            keep: &["after-dst"],
        },
        Case {
            name: "keep_weekly: ISO weeks start on Monday 00:00 UTC",
            policy: policy(rule(None, None, None, Some(2), None)),
            now: "2026-12-01T00:00:00Z",
            // 2026-11-22 is a Sunday (week 47), 2026-11-23 a Monday (week 48).
            backups: vec![
                phys("w46", "2026-11-12T03:00:00Z"),
                phys("w47-mon", "2026-11-16T00:00:00Z"),
                phys("w47-sun", "2026-11-22T23:59:59Z"),
                phys("w48-mon", "2026-11-23T00:00:00Z"),
            ],
            keep: &["w47-sun", "w48-mon"],
        },
        Case {
            name: "keep_monthly across a year boundary",
            policy: policy(rule(None, None, None, None, Some(2))),
            now: "2027-01-15T00:00:00Z",
            backups: vec![
                phys("nov", "2026-11-30T23:59:59Z"),
                phys("dec-a", "2026-12-01T00:00:00Z"),
                phys("dec-b", "2026-12-31T23:59:59Z"),
                phys("jan", "2027-01-01T00:00:00Z"),
            ],
            keep: &["dec-b", "jan"],
        },
        Case {
            name: "tiers combine: a backup is kept when any tier keeps it",
            policy: policy(rule(Some(1), None, Some(2), Some(2), Some(3))),
            now: "2026-12-31T00:00:00Z",
            backups: vec![
                phys("sep", "2026-09-15T00:00:00Z"),
                phys("oct", "2026-10-15T00:00:00Z"),
                phys("nov-1", "2026-11-02T00:00:00Z"),
                phys("nov-2", "2026-11-20T00:00:00Z"),
                phys("dec-1", "2026-12-20T00:00:00Z"),
                phys("dec-2", "2026-12-28T00:00:00Z"),
                phys("dec-3", "2026-12-29T00:00:00Z"),
                phys("dec-4", "2026-12-30T00:00:00Z"),
            ],
            // last: dec-4; daily: dec-4, dec-3; weekly (W53: dec-28..30; W51: dec-20): dec-4,
            // dec-1; monthly: dec-4, nov-2, oct.
            keep: &["dec-1", "dec-3", "dec-4", "nov-2", "oct"],
        },
        Case {
            name: "a single backup is kept whatever the rules say",
            policy: policy(rule(None, Some("1d"), None, None, None)),
            now: "2030-01-01T00:00:00Z",
            backups: vec![phys("only", "2026-01-01T00:00:00Z")],
            keep: &["only"],
        },
        Case {
            name: "all unverified and all expired: only the newest of each kind stays",
            policy: RetentionConfig {
                physical: rule(None, Some("1d"), None, None, None),
                logical: rule(None, Some("1d"), None, None, None),
                ..RetentionConfig::default()
            },
            now: "2027-01-01T00:00:00Z",
            backups: vec![
                phys("p1", "2026-01-01T00:00:00Z"),
                phys("p2", "2026-02-01T00:00:00Z"),
                logi("l1", "2026-01-01T00:00:00Z"),
                logi("l2", "2026-02-01T00:00:00Z"),
            ],
            keep: &["l2", "p2"],
        },
        Case {
            name: "the newest verified backup is kept even when rules and recency drop it",
            policy: policy(last(1)),
            now: "2026-12-01T00:00:00Z",
            backups: vec![
                phys("old-ok", "2026-11-01T00:00:00Z").verified(ok),
                phys("older-ok", "2026-10-01T00:00:00Z").verified(ok),
                phys("failed", "2026-11-10T00:00:00Z").verified(Outcome::Failed),
                phys("newest-unverified", "2026-11-20T00:00:00Z"),
            ],
            keep: &["newest-unverified", "old-ok"],
        },
        Case {
            name: "a failed verification does not count as verified",
            policy: policy(last(1)),
            now: "2026-12-01T00:00:00Z",
            backups: vec![
                phys("a", "2026-11-01T00:00:00Z"),
                phys("b-failed", "2026-11-02T00:00:00Z").verified(Outcome::Failed),
                phys("c", "2026-11-03T00:00:00Z"),
            ],
            keep: &["c"],
        },
        Case {
            name: "labelled backups follow their own rule, not the kind's",
            policy: RetentionConfig {
                physical: last(2),
                labels: [("pre-migration".to_string(), last(1))].into(),
                ..RetentionConfig::default()
            },
            now: "2026-12-01T00:00:00Z",
            backups: vec![
                phys("u1", "2026-11-01T00:00:00Z"),
                phys("u2", "2026-11-02T00:00:00Z"),
                phys("u3", "2026-11-03T00:00:00Z"),
                phys("pm1", "2026-11-04T00:00:00Z").label("pre-migration"),
                phys("pm2", "2026-11-05T00:00:00Z").label("pre-migration"),
            ],
            // pm2 is also the newest physical backup; u2 and u3 are the unlabelled two.
            keep: &["pm2", "u2", "u3"],
        },
        Case {
            name: "a label without a rule pins its backups",
            policy: policy(last(1)),
            now: "2030-01-01T00:00:00Z",
            backups: vec![
                phys("pinned", "2020-01-01T00:00:00Z").label("before-upgrade"),
                phys("x1", "2029-01-01T00:00:00Z"),
                phys("x2", "2029-06-01T00:00:00Z"),
            ],
            keep: &["pinned", "x2"],
        },
        Case {
            name: "kinds are independent",
            policy: RetentionConfig {
                physical: last(1),
                logical: last(2),
                ..RetentionConfig::default()
            },
            now: "2026-12-01T00:00:00Z",
            backups: vec![
                logi("l1", "2026-11-01T00:00:00Z"),
                phys("p1", "2026-11-01T01:00:00Z"),
                logi("l2", "2026-11-02T00:00:00Z"),
                phys("p2", "2026-11-02T01:00:00Z"),
                logi("l3", "2026-11-03T00:00:00Z"),
            ],
            keep: &["l2", "l3", "p2"],
        },
        Case {
            name: "order comes from manifest times, not from ids or input order",
            policy: policy(last(2)),
            now: "2026-12-01T00:00:00Z",
            // Ids sort opposite to time, and the input is shuffled.
            backups: vec![
                phys("b-second", "2026-11-02T00:00:00Z"),
                phys("z-oldest", "2026-11-01T00:00:00Z"),
                phys("a-newest", "2026-11-04T00:00:00Z"),
                phys("c-third", "2026-11-03T00:00:00Z"),
            ],
            keep: &["a-newest", "c-third"],
        },
    ];
    for c in &cases {
        let mut want: Vec<String> = c.keep.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(kept(c), want, "case: {}", c.name);
        // Input order never matters.
        let mut reversed = c.backups.clone();
        reversed.reverse();
        let r = Case {
            name: c.name,
            policy: c.policy.clone(),
            now: c.now,
            backups: reversed,
            keep: c.keep,
        };
        assert_eq!(kept(&r), want, "case (input reversed): {}", c.name);
    }
}

#[test]
fn reasons_name_the_rule_and_the_invariant() {
    let ms: Vec<Manifest> = [
        phys("p1", "2026-11-01T00:00:00Z").verified(Outcome::Ok),
        phys("p2", "2026-11-02T00:00:00Z"),
        phys("p3", "2026-11-03T00:00:00Z"),
        phys("pm", "2026-10-01T00:00:00Z").label("pre-migration"),
    ]
    .iter()
    .map(manifest)
    .collect();
    let out = decide(&ms, &policy(last(1)), t("2026-12-01T00:00:00Z"));
    let by = |id: &str| out.iter().find(|d| d.id == id).unwrap().clone();
    let p3 = by("p3");
    assert_eq!(p3.rule.as_deref(), Some("retention.physical"));
    assert!(
        p3.reasons
            .iter()
            .any(|r| r.contains("newest physical backup")),
        "{:?}",
        p3.reasons
    );
    assert!(p3.reasons.iter().any(|r| r.contains("keep_last = 1")));
    let p1 = by("p1");
    assert_eq!(p1.action, Action::Keep);
    assert_eq!(p1.verified.as_deref(), Some("ok"));
    assert!(p1.reasons.iter().any(|r| r.contains("newest verified")));
    let p2 = by("p2");
    assert_eq!(p2.action, Action::Delete);
    assert!(
        p2.reasons[0].contains("retention.physical") && p2.reasons[0].contains("#2 newest"),
        "{:?}",
        p2.reasons
    );
    let pm = by("pm");
    assert_eq!(pm.rule, None);
    assert!(pm.reasons[0].contains("no rule in retention.labels"));
}

#[test]
fn describe_rule_and_ages() {
    assert_eq!(
        describe_rule(&rule(Some(2), Some("30d"), Some(7), None, Some(12))),
        "keep_last = 2, keep_within = 30d, keep_daily = 7, keep_monthly = 12"
    );
    assert_eq!(fmt_age(chrono::Duration::seconds(40)), "40s");
    assert_eq!(
        fmt_age(chrono::Duration::seconds(3 * 86400 + 4 * 3600 + 5)),
        "3d 4h"
    );
    let _ = Duration::ZERO;
}

#[test]
fn the_newest_logical_backup_of_each_database_is_kept() {
    let with_dbs = |b: B, dbs: &[&str]| {
        let mut m = manifest(&b);
        m.logical.as_mut().unwrap().databases =
            dbs.iter().map(|d| database_dump(d, 1, vec![])).collect();
        m
    };
    let ms = vec![
        with_dbs(logi("all-old", "2026-11-01T00:00:00Z"), &["app", "reports"]),
        with_dbs(
            logi("reports-verified", "2026-11-02T00:00:00Z").verified(Outcome::Ok),
            &["reports"],
        ),
        with_dbs(logi("reports-new", "2026-11-03T00:00:00Z"), &["reports"]),
        with_dbs(logi("app-1", "2026-11-04T00:00:00Z"), &["app"]),
        with_dbs(logi("app-2", "2026-11-05T00:00:00Z"), &["app"]),
    ];
    let p = RetentionConfig {
        logical: last(1),
        ..RetentionConfig::default()
    };
    let out = decide(&ms, &p, t("2026-12-01T00:00:00Z"));
    let kept: Vec<&str> = out
        .iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(kept, vec!["reports-verified", "reports-new", "app-2"]);
    let rv = out.iter().find(|d| d.id == "reports-verified").unwrap();
    assert!(
        rv.reasons.iter().any(|r| r.contains("database reports")),
        "{:?}",
        rv.reasons
    );
}
