//! Which backups the retention policy keeps, and why: a pure function of
//! (manifests, policy, now).
//!
//! Rules (`keep_last`, `keep_within`, `keep_daily/weekly/monthly`) apply per group: the
//! unlabelled backups of one kind (`retention.physical`, `retention.logical`), or the
//! backups of one kind carrying a label with a rule (`retention.labels.<label>`). A backup
//! is kept when any rule of its group keeps it. A label without a rule pins its backups:
//! they are kept until a rule is added or they are deleted by hand (a pre-migration backup
//! is never lost to a policy that was written without it in mind).
//!
//! On top of the rules, two invariants per kind, across all labels: the newest backup and
//! the newest backup whose verification succeeded are never deleted. So a kind that has
//! any backup always keeps one, and a kind with no verified backup keeps its newest. The
//! same holds per database for logical backups (a backup may dump only some databases).
//!
//! Time is the manifest's `start_time` (UTC), ties broken by `stop_time` then id; never
//! the listing order or the name. Days, ISO weeks and months are UTC calendar periods, so
//! daylight-saving changes cannot move a backup between periods.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::config::{RetentionConfig, RetentionRule};
use crate::manifest::{BackupKind, Manifest, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        }
    }
}

/// The verdict on one complete backup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupDecision {
    pub id: String,
    pub kind: BackupKind,
    pub label: Option<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// `ok`, `failed`, or absent when never verified.
    pub verified: Option<String>,
    /// The config key whose rule applies; `None` for a label without a rule (pinned).
    pub rule: Option<String>,
    pub action: Action,
    /// Every reason it is kept, or why nothing keeps it.
    pub reasons: Vec<String>,
}

/// Newest first, by manifest times; the id only breaks exact ties.
fn newest_first(a: &Manifest, b: &Manifest) -> std::cmp::Ordering {
    (b.start_time, b.stop_time, &b.id).cmp(&(a.start_time, a.stop_time, &a.id))
}

/// `3d 4h`, `2h 5m`, `40s`: an age for messages.
pub fn fmt_age(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    let (days, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (days, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{days}d {h}h"),
    }
}

fn fmt_duration(d: std::time::Duration) -> String {
    crate::text::config_duration(d)
}

/// `keep_last = 2, keep_within = 30days`.
pub fn describe_rule(rule: &RetentionRule) -> String {
    let mut parts = vec![];
    if let Some(n) = rule.keep_last {
        parts.push(format!("keep_last = {n}"));
    }
    if let Some(d) = rule.keep_within {
        parts.push(format!("keep_within = {}", fmt_duration(d)));
    }
    for (k, v) in [
        ("keep_daily", rule.keep_daily),
        ("keep_weekly", rule.keep_weekly),
        ("keep_monthly", rule.keep_monthly),
    ] {
        if let Some(n) = v {
            parts.push(format!("{k} = {n}"));
        }
    }
    parts.join(", ")
}

/// A calendar tier: how many periods, and the UTC period a time falls in.
struct Tier {
    key: &'static str,
    keep: u32,
    period: fn(&DateTime<Utc>) -> String,
}

fn day(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn iso_week(t: &DateTime<Utc>) -> String {
    let w = t.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

fn month(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m").to_string()
}

/// Reasons to keep each backup of one group (`group` is newest first), or why not.
fn apply_rule(
    rule: &RetentionRule,
    key: &str,
    group: &[&Manifest],
    now: DateTime<Utc>,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<(Vec<String>, Vec<String>)> = vec![(vec![], vec![]); group.len()];
    if let Some(n) = rule.keep_last {
        for (i, (keep, why_not)) in out.iter_mut().enumerate() {
            if i < n as usize {
                keep.push(format!(
                    "{key}.keep_last = {n}: #{} newest of its group",
                    i + 1
                ));
            } else {
                why_not.push(format!("#{} newest (keep_last = {n})", i + 1));
            }
        }
    }
    if let Some(d) = rule.keep_within {
        for (m, (keep, why_not)) in group.iter().zip(out.iter_mut()) {
            let age = now - m.start_time;
            if age < chrono::Duration::zero() {
                keep.push(format!(
                    "{key}.keep_within: starts in the future ({}; is a clock wrong?)",
                    m.start_time.to_rfc3339()
                ));
            } else if age.to_std().is_ok_and(|a| a <= d) {
                keep.push(format!(
                    "{key}.keep_within = {}: started {} ago",
                    fmt_duration(d),
                    fmt_age(age)
                ));
            } else {
                why_not.push(format!(
                    "started {} ago (keep_within = {})",
                    fmt_age(age),
                    fmt_duration(d)
                ));
            }
        }
    }
    let tiers = [
        Tier {
            key: "keep_daily",
            keep: rule.keep_daily.unwrap_or(0),
            period: day,
        },
        Tier {
            key: "keep_weekly",
            keep: rule.keep_weekly.unwrap_or(0),
            period: iso_week,
        },
        Tier {
            key: "keep_monthly",
            keep: rule.keep_monthly.unwrap_or(0),
            period: month,
        },
    ];
    for tier in tiers.iter().filter(|t| t.keep > 0) {
        // Newest first: the first backup seen in a period is that period's newest.
        // Period → whether its newest backup is kept.
        let mut seen: HashMap<String, bool> = HashMap::new();
        for (m, (keep, why_not)) in group.iter().zip(out.iter_mut()) {
            let p = (tier.period)(&m.start_time);
            let kept_periods = seen.values().filter(|k| **k).count();
            match seen.get(&p) {
                Some(true) => why_not.push(format!("a newer backup stands for {p} ({})", tier.key)),
                Some(false) => why_not.push(format!(
                    "{p} is beyond the {} newest periods with backups ({})",
                    tier.keep, tier.key
                )),
                None if kept_periods < tier.keep as usize => {
                    seen.insert(p.clone(), true);
                    keep.push(format!(
                        "{key}.{} = {}: newest of {p} (UTC)",
                        tier.key, tier.keep
                    ));
                }
                None => {
                    seen.insert(p.clone(), false);
                    why_not.push(format!(
                        "{p} is beyond the {} newest periods with backups ({})",
                        tier.keep, tier.key
                    ));
                }
            }
        }
    }
    out
}

/// Decide every backup. The result is in time order, oldest first.
pub fn decide(
    backups: &[Manifest],
    policy: &RetentionConfig,
    now: DateTime<Utc>,
) -> Vec<BackupDecision> {
    let mut sorted: Vec<&Manifest> = backups.iter().collect();
    sorted.sort_by(|a, b| newest_first(a, b));

    let mut keep: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut why_not: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut rule_key: BTreeMap<&str, Option<String>> = BTreeMap::new();

    // Groups: (kind, label) in newest-first order.
    let mut groups: BTreeMap<(BackupKind, Option<&str>), Vec<&Manifest>> = BTreeMap::new();
    for m in &sorted {
        let label = m.label.as_deref().filter(|l| !l.is_empty());
        groups.entry((m.kind, label)).or_default().push(m);
    }
    for ((kind, label), group) in &groups {
        let (key, rule) = match label {
            None => match kind {
                BackupKind::Physical => ("retention.physical".to_string(), &policy.physical),
                BackupKind::Logical => ("retention.logical".to_string(), &policy.logical),
            },
            Some(l) => match policy.labels.get(*l) {
                Some(rule) => (format!("retention.labels.{l}"), rule),
                None => {
                    for m in group {
                        rule_key.insert(&m.id, None);
                        keep.entry(&m.id).or_default().push(format!(
                            "label {l:?} has no rule in retention.labels: kept until one is added"
                        ));
                    }
                    continue;
                }
            },
        };
        for (m, (k, w)) in group.iter().zip(apply_rule(rule, &key, group, now)) {
            rule_key.insert(&m.id, Some(key.clone()));
            keep.entry(&m.id).or_default().extend(k);
            why_not.entry(&m.id).or_default().extend(w);
        }
    }

    // Invariants, per kind across labels.
    for kind in [BackupKind::Physical, BackupKind::Logical] {
        let mut of_kind = sorted.iter().filter(|m| m.kind == kind);
        if let Some(newest) = of_kind.next() {
            keep.entry(&newest.id)
                .or_default()
                .push(format!("newest {kind} backup: never deleted"));
        }
        if let Some(v) = sorted.iter().find(|m| m.kind == kind && m.is_verified_ok()) {
            keep.entry(&v.id)
                .or_default()
                .push(format!("newest verified {kind} backup: never deleted"));
        }
    }

    // Logical backups may hold only some databases (`backup --database app`): the newest
    // (and newest verified) backup of each database stays too, or a database's last dump
    // could go while other databases' dumps are kept.
    let mut databases: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in sorted.iter().filter(|m| m.kind == BackupKind::Logical) {
        for d in m.logical.iter().flat_map(|l| &l.databases) {
            databases.entry(&d.name).or_default().push(m);
        }
    }
    for (db, with_db) in &databases {
        if let Some(newest) = with_db.first() {
            keep.entry(&newest.id).or_default().push(format!(
                "newest logical backup of database {db}: never deleted"
            ));
        }
        if let Some(v) = with_db.iter().find(|m| m.is_verified_ok()) {
            keep.entry(&v.id).or_default().push(format!(
                "newest verified logical backup of database {db}: never deleted"
            ));
        }
    }

    let mut out: Vec<BackupDecision> = sorted
        .iter()
        .rev()
        .map(|m| {
            let reasons = keep.get(m.id.as_str()).cloned().unwrap_or_default();
            let rule = rule_key.get(m.id.as_str()).cloned().flatten();
            let (action, reasons) = if reasons.is_empty() {
                let w = why_not.get(m.id.as_str()).cloned().unwrap_or_default();
                (
                    Action::Delete,
                    vec![format!(
                        "no rule of {} keeps it: {}",
                        rule.as_deref().unwrap_or("the policy"),
                        w.join("; ")
                    )],
                )
            } else {
                (Action::Keep, reasons)
            };
            BackupDecision {
                id: m.id.clone(),
                kind: m.kind,
                label: m.label.clone(),
                start_time: m.start_time,
                stop_time: m.stop_time,
                verified: m.verification.as_ref().map(|v| match v.outcome {
                    Outcome::Ok => "ok".to_string(),
                    Outcome::Failed => "failed".to_string(),
                }),
                rule,
                action,
                reasons,
            }
        })
        .collect();
    // `sorted.rev()` is oldest first already; keep it explicit for readers of the output.
    out.sort_by(|a, b| (a.start_time, a.stop_time, &a.id).cmp(&(b.start_time, b.stop_time, &b.id)));
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
pub(crate) mod tests;
