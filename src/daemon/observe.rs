//! What the daemon watches between jobs: PostgreSQL's archiver (`pg_stat_archiver`) and
//! the repository (backups, verification results, recoverable windows). The numbers feed
//! `/metrics` and the "newest verified backup is too old" alert.
//!
//! Collection is I/O at the edge ([`observe`]); everything derived from it
//! ([`RepoFacts::from_status`], [`staleness`]) is a pure function with tests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::manifest::{BackupKind, Outcome as VerifyOutcome};
use crate::ops::status::RepoStatus;
use crate::recovery::plan::Window;

/// One look at PostgreSQL and the repository. An `Err` says why that side was unreachable.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: DateTime<Utc>,
    pub archiver: Result<Archiver, String>,
    pub repo: Result<RepoFacts, String>,
}

/// `pg_stat_archiver` and the archiving settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Archiver {
    pub archive_mode: String,
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// `.ready` files in pg_wal/archive_status: segments waiting for `archive_command`.
    /// `None` when the role may not list the directory.
    pub ready_segments: Option<i64>,
}

impl Archiver {
    /// The last attempt failed: a failure is newer than the last success.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Seconds since the last segment was archived.
    pub fn lag_secs(&self, now: DateTime<Utc>) -> Option<f64> {
        self.last_archived_time.map(|t| secs_between(t, now))
    }
}

/// Per backup kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindFacts {
    pub count: usize,
    /// Id and stop time of the oldest complete backup.
    pub oldest: Option<(String, DateTime<Utc>)>,
    /// Id and stop time of the newest complete backup.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Id and stop time of the newest backup whose verification succeeded.
    pub newest_verified: Option<(String, DateTime<Utc>)>,
    /// The most recent verification of any backup of this kind.
    pub last_verification: Option<LastVerification>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastVerification {
    pub backup_id: String,
    pub time: DateTime<Utc>,
    pub ok: bool,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoFacts {
    pub kinds: BTreeMap<BackupKind, KindFacts>,
    pub incomplete: usize,
    /// Backups whose manifest exists but cannot be used (not JSON, altered, newer format).
    pub unreadable_manifests: usize,
    /// The newest recoverable window, and how many there are (more than one = a gap).
    pub window: Option<Window>,
    pub windows: usize,
    /// Per timeline: the earliest and the latest time PITR can reach on it (across its
    /// windows, gaps included), `None` for an end still open.
    pub timelines: BTreeMap<u32, (DateTime<Utc>, Option<DateTime<Utc>>)>,
    pub gaps: usize,
    /// The last time `verify --wal` found every archived WAL object intact.
    pub wal_verified_at: Option<DateTime<Utc>>,
}

impl RepoFacts {
    pub fn from_status(st: &RepoStatus) -> RepoFacts {
        let mut kinds: BTreeMap<BackupKind, KindFacts> = BTreeMap::new();
        for kind in [BackupKind::Physical, BackupKind::Logical] {
            kinds.insert(kind, KindFacts::default());
        }
        // `complete` is ordered by start time; compare stop times explicitly anyway.
        for m in &st.catalog.complete {
            let k = kinds.entry(m.kind).or_default();
            k.count += 1;
            if k.oldest.as_ref().is_none_or(|(_, t)| m.stop_time < *t) {
                k.oldest = Some((m.id.clone(), m.stop_time));
            }
            if k.newest.as_ref().is_none_or(|(_, t)| m.stop_time >= *t) {
                k.newest = Some((m.id.clone(), m.stop_time));
            }
            if let Some(v) = &m.verification {
                let ok = v.outcome == VerifyOutcome::Ok;
                if ok
                    && k.newest_verified
                        .as_ref()
                        .is_none_or(|(_, t)| m.stop_time >= *t)
                {
                    k.newest_verified = Some((m.id.clone(), m.stop_time));
                }
                if k.last_verification
                    .as_ref()
                    .is_none_or(|l| v.time >= l.time)
                {
                    k.last_verification = Some(LastVerification {
                        backup_id: m.id.clone(),
                        time: v.time,
                        ok,
                        duration_secs: v.duration_secs,
                    });
                }
            }
        }
        RepoFacts {
            kinds,
            incomplete: st.catalog.incomplete.len(),
            unreadable_manifests: st.catalog.unreadable.len(),
            window: st.windows.iter().max_by_key(|w| (w.to, w.from)).cloned(),
            windows: st.windows.len(),
            timelines: st.windows.iter().fold(BTreeMap::new(), |mut acc, w| {
                let e = acc.entry(w.timeline).or_insert((w.from, w.to));
                e.0 = e.0.min(w.from);
                e.1 = e.1.max(w.to);
                acc
            }),
            gaps: st.gaps.len(),
            wal_verified_at: None,
        }
    }

    /// The newest verified backup of any kind.
    pub fn newest_verified(&self) -> Option<(&str, DateTime<Utc>)> {
        self.kinds
            .values()
            .filter_map(|k| k.newest_verified.as_ref())
            .max_by_key(|(_, t)| *t)
            .map(|(id, t)| (id.as_str(), *t))
    }
}

/// Why the newest verified backup is too old, or `None` when it is fresh enough.
/// Without any verified backup the daemon gives a fresh installation `max_age` (counted
/// from the daemon's start) to produce one before it alerts.
pub fn staleness(
    newest_verified: Option<(&str, DateTime<Utc>)>,
    max_age: Duration,
    now: DateTime<Utc>,
    up_since: DateTime<Utc>,
) -> Option<String> {
    let max = chrono::Duration::from_std(max_age).unwrap_or(chrono::TimeDelta::MAX);
    match newest_verified {
        Some((id, t)) if now - t > max => Some(format!(
            "the newest verified backup {id} is {} old, more than notify.max_age ({})",
            human_age(now - t),
            crate::text::config_duration(max_age)
        )),
        Some(_) => None,
        None if now - up_since > max => Some(format!(
            "no verified backup exists (the daemon has been running for {}, notify.max_age is {})",
            human_age(now - up_since),
            crate::text::config_duration(max_age)
        )),
        None => None,
    }
}

fn human_age(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Look at PostgreSQL and (with `with_repo`) the repository, each bounded by `timeout`.
/// Without `with_repo` the `repo` field is a placeholder the caller replaces with its
/// previous look.
pub async fn observe(cfg: &Config, timeout: Duration, with_repo: bool) -> Observation {
    let archiver = async {
        tokio::time::timeout(timeout, read_archiver(cfg))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
            .map_err(|e| format!("{e:#}"))
    };
    let repo = async {
        if !with_repo {
            return Err("not looked at".to_string());
        }
        tokio::time::timeout(timeout, read_repo(cfg))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
            .map_err(|e| format!("{e:#}"))
    };
    let (archiver, repo) = tokio::join!(archiver, repo);
    Observation {
        at: Utc::now(),
        archiver,
        repo,
    }
}

async fn read_archiver(cfg: &Config) -> anyhow::Result<Archiver> {
    let client = crate::pg::conn::connect(&cfg.postgres).await?;
    let row = client
        .query_one(
            "SELECT current_setting('archive_mode'), archived_count, failed_count, \
                    last_archived_wal, last_archived_time, last_failed_time \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .context("read pg_stat_archiver")?;
    // pg_ls_archive_statusdir needs pg_monitor or superuser; without it the backlog is
    // unknown, which must not hide the rest of the archiver's state.
    let ready_segments = match client
        .query_one(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
            &[],
        )
        .await
    {
        Ok(row) => Some(row.get(0)),
        Err(e) => {
            tracing::debug!("cannot count the WAL segments waiting for archiving: {e}");
            None
        }
    };
    Ok(Archiver {
        archive_mode: row.get(0),
        archived_count: row.get(1),
        failed_count: row.get(2),
        last_archived_wal: row.get(3),
        last_archived_time: row.get(4),
        last_failed_time: row.get(5),
        ready_segments,
    })
}

async fn read_repo(cfg: &Config) -> anyhow::Result<RepoFacts> {
    let repo = crate::repo::open(cfg).await?;
    let st = RepoStatus::load(repo.as_ref()).await?;
    let mut facts = RepoFacts::from_status(&st);
    facts.wal_verified_at = crate::repo::walcheck::WalChecked::load(repo.as_ref())
        .await?
        .complete_at;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Catalog, Manifest};
    use crate::test_fixtures::{self as fixtures, verification};
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, h, 0, 0).unwrap()
    }

    #[test]
    fn archiver_failing_compares_the_last_failure_with_the_last_success() {
        let base = Archiver {
            archive_mode: "on".into(),
            archived_count: 3,
            failed_count: 1,
            last_archived_wal: Some("000000010000000000000003".into()),
            last_archived_time: Some(t(3)),
            last_failed_time: None,
            ready_segments: None,
        };
        let cases = [
            (None, Some(t(3)), false),
            (Some(t(2)), Some(t(3)), false),
            (Some(t(4)), Some(t(3)), true),
            (Some(t(4)), None, true),
            (None, None, false),
        ];
        for (failed, archived, want) in cases {
            let a = Archiver {
                last_failed_time: failed,
                last_archived_time: archived,
                ..base.clone()
            };
            assert_eq!(a.failing(), want, "{failed:?} {archived:?}");
        }
        assert_eq!(base.lag_secs(t(5)), Some(7200.0));
    }

    fn manifest(
        id: &str,
        kind: BackupKind,
        stop_h: u32,
        verified: Option<(u32, bool)>,
    ) -> Manifest {
        let mut m = fixtures::manifest(id, kind, t(stop_h), t(stop_h));
        m.verification = verified.map(|(at, ok)| {
            let outcome = if ok {
                VerifyOutcome::Ok
            } else {
                VerifyOutcome::Failed
            };
            verification(t(at), outcome, 12.5)
        });
        m
    }

    #[test]
    fn repository_facts_per_kind() {
        let st = RepoStatus {
            identity: None,
            catalog: Catalog {
                complete: vec![
                    manifest("p1", BackupKind::Physical, 1, Some((2, true))),
                    manifest("p2", BackupKind::Physical, 3, Some((9, false))),
                    manifest("p3", BackupKind::Physical, 5, None),
                    manifest("l1", BackupKind::Logical, 4, Some((6, true))),
                ],
                incomplete: vec![("x".into(), None)],
                unreadable: vec![crate::manifest::Unreadable {
                    id: "u".into(),
                    kind: None,
                    start_time: None,
                    reason: "manifest of backup u is unreadable".into(),
                    fix: "repair it".into(),
                }],
            },
            inventory: Default::default(),
            timeline: None,
            windows: vec![],
            gaps: vec![],
        };
        let f = RepoFacts::from_status(&st);
        let p = &f.kinds[&BackupKind::Physical];
        assert_eq!(p.count, 3);
        assert_eq!(p.newest, Some(("p3".into(), t(5))));
        assert_eq!(p.oldest, Some(("p1".into(), t(1))));
        // The newest backup that verified ok, not the newest verified one.
        assert_eq!(p.newest_verified, Some(("p1".into(), t(1))));
        // The most recent verification, whatever its outcome.
        let last = p.last_verification.as_ref().unwrap();
        assert_eq!((last.backup_id.as_str(), last.ok), ("p2", false));
        assert_eq!(f.incomplete, 1);
        assert_eq!(f.unreadable_manifests, 1);
        assert_eq!(f.newest_verified(), Some(("l1", t(4))));
        // No backups of a kind: present, empty (metrics show a count of 0).
        let empty = RepoFacts::from_status(&RepoStatus {
            catalog: Catalog::default(),
            ..st
        });
        assert_eq!(empty.kinds[&BackupKind::Logical].count, 0);
        assert_eq!(empty.newest_verified(), None);
    }

    #[test]
    fn staleness_policy() {
        let day = Duration::from_secs(86400);
        // (newest verified stop time, now, daemon up since, stale?)
        let cases = [
            (Some(t(0)), t(12), t(0), false),
            (Some(t(0)), t(23), t(23), false),
            (
                Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
                t(1),
                t(0),
                true,
            ),
            (None, t(12), t(0), false),
            (
                None,
                t(12),
                Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap(),
                true,
            ),
        ];
        for (newest, now, up, want) in cases {
            let got = staleness(newest.map(|n| ("b1", n)), day, now, up);
            assert_eq!(got.is_some(), want, "{newest:?} {now} {up}: {got:?}");
            if let Some(msg) = got {
                assert!(msg.contains("notify.max_age"), "{msg}");
            }
        }
    }
}
