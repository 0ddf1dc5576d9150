//! When jobs run: the `[schedule]` cron expressions, read in `schedule.timezone`.
//!
//! Occurrences are computed by croner on a real IANA zone (`chrono_tz`), not with a UTC
//! offset fixed at start-up: tokio-cron-scheduler 0.15 captures the zone's offset when a
//! job is created (its open issue #87), so a daemon started in winter would run a
//! `0 3 * * *` Europe/Berlin job at 04:00 all summer. Here the zone's rules apply to every
//! occurrence: a job in the hour skipped in spring runs at the first valid time after it,
//! a job in the hour repeated in autumn runs once.
//!
//! The daemon asks [`Ticker::due`] at least once a second with the wall clock; the answer
//! is a pure function of (schedule, last check, now). Each kind fires at most once per
//! check: after a forward clock jump or a stall the missed occurrences are counted and
//! logged, not replayed. When the clock goes backwards nothing fires twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::config::ScheduleConfig;
use crate::error::UserError;
use crate::jobs::JobKind;

/// The configured jobs and their zone.
#[derive(Clone)]
pub struct Schedule {
    pub tz: Tz,
    pub entries: Vec<Entry>,
}

#[derive(Clone)]
pub struct Entry {
    pub kind: JobKind,
    /// As written in the config.
    pub expr: String,
    cron: Cron,
}

impl Schedule {
    /// Compile `[schedule]`. Refuses (naming the key) an expression that does not parse.
    pub fn from_config(cfg: &ScheduleConfig) -> Result<Schedule, UserError> {
        let tz: Tz = cfg.timezone.parse().map_err(|_| {
            UserError::new(format!(
                "key `schedule.timezone`: {:?} is not an IANA time zone; use e.g. \"UTC\" or \"Europe/Berlin\"",
                cfg.timezone
            ))
        })?;
        let mut entries = vec![];
        for (key, expr) in cfg.entries() {
            let kind: JobKind = key.parse().map_err(UserError::new)?;
            let cron = crate::schedule::cron(expr)
                .map_err(|e| UserError::new(format!("key `schedule.{key}`: {e}")))?;
            entries.push(Entry {
                kind,
                expr: expr.to_string(),
                cron,
            });
        }
        Ok(Schedule { tz, entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn kinds(&self) -> impl Iterator<Item = JobKind> + '_ {
        self.entries.iter().map(|e| e.kind)
    }

    /// The first occurrence of `kind` strictly after `t`.
    pub fn next_after(&self, kind: JobKind, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let e = self.entries.iter().find(|e| e.kind == kind)?;
        next_of(&e.cron, self.tz, t)
    }
}

fn next_of(cron: &Cron, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t.with_timezone(&tz), false)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// A job that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub kind: JobKind,
    /// The newest occurrence at or before now.
    pub at: DateTime<Utc>,
    /// Older occurrences that passed without their own run (clock jump, stalled host).
    pub missed: u32,
}

/// Remembers each job's next occurrence between checks.
#[derive(Debug, Clone)]
pub struct Ticker {
    next: BTreeMap<JobKind, DateTime<Utc>>,
    last: DateTime<Utc>,
}

impl Ticker {
    /// Start counting at `now`: occurrences before it do not fire.
    pub fn new(schedule: &Schedule, now: DateTime<Utc>) -> Ticker {
        let next = schedule
            .entries
            .iter()
            .filter_map(|e| Some((e.kind, next_of(&e.cron, schedule.tz, now)?)))
            .collect();
        Ticker { next, last: now }
    }

    /// The jobs whose occurrence lies in (last check, now]; advances past them.
    pub fn due(&mut self, schedule: &Schedule, now: DateTime<Utc>) -> Vec<Due> {
        if now < self.last {
            // The clock went back: keep the pending occurrences (all after the old
            // "last"), so nothing that already ran runs again.
            return vec![];
        }
        self.last = now;
        let mut out = vec![];
        for e in &schedule.entries {
            let Some(&next) = self.next.get(&e.kind) else {
                continue;
            };
            if next > now {
                continue;
            }
            let mut at = next;
            let mut missed = 0u32;
            let mut following = next_of(&e.cron, schedule.tz, at);
            // Bounded: a per-second job after a day-long stall counts up to the cap.
            while let Some(f) = following.filter(|f| *f <= now) {
                at = f;
                missed = missed.saturating_add(1);
                if missed >= 100_000 {
                    following = next_of(&e.cron, schedule.tz, now);
                    break;
                }
                following = next_of(&e.cron, schedule.tz, at);
            }
            match following {
                Some(f) => self.next.insert(e.kind, f),
                None => self.next.remove(&e.kind),
            };
            out.push(Due {
                kind: e.kind,
                at,
                missed,
            });
        }
        out
    }

    /// The last time [`Ticker::due`] looked at the clock.
    pub fn last(&self) -> DateTime<Utc> {
        self.last
    }

    /// The next occurrence of any job.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.next.values().min().copied()
    }

    pub fn next_of(&self, kind: JobKind) -> Option<DateTime<Utc>> {
        self.next.get(&kind).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(tz: &str, entries: &[(&str, &str)]) -> Schedule {
        let mut cfg = ScheduleConfig {
            timezone: tz.into(),
            ..Default::default()
        };
        for (k, v) in entries {
            let v = Some(v.to_string());
            match *k {
                "physical" => cfg.physical = v,
                "logical" => cfg.logical = v,
                other => panic!("{other}"),
            }
        }
        Schedule::from_config(&cfg).unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// The UTC instants at which `expr` fires between `from` and `to`, checking every
    /// `step` seconds like the daemon does.
    fn fired(
        s: &Schedule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step: i64,
    ) -> Vec<DateTime<Utc>> {
        let mut t = Ticker::new(s, from);
        let mut now = from;
        let mut out = vec![];
        while now < to {
            now += chrono::Duration::seconds(step);
            for d in t.due(s, now) {
                assert_eq!(d.missed, 0, "missed at {now}");
                out.push(d.at);
            }
        }
        out
    }

    #[test]
    fn daily_job_keeps_local_time_across_daylight_saving_changes() {
        // (zone, expr, from, to, expected UTC firings)
        type Case = (
            &'static str,
            &'static str,
            DateTime<Utc>,
            DateTime<Utc>,
            Vec<DateTime<Utc>>,
        );
        let cases: &[Case] = &[
            // Berlin, spring forward on 2026-03-29: 03:00 local is 02:00 UTC before, 01:00 after.
            (
                "Europe/Berlin",
                "0 3 * * *",
                utc(2026, 3, 27, 12, 0, 0),
                utc(2026, 3, 30, 12, 0, 0),
                vec![
                    utc(2026, 3, 28, 2, 0, 0),
                    utc(2026, 3, 29, 1, 0, 0),
                    utc(2026, 3, 30, 1, 0, 0),
                ],
            ),
            // 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:00 CEST.
            (
                "Europe/Berlin",
                "30 2 * * *",
                utc(2026, 3, 28, 12, 0, 0),
                utc(2026, 3, 30, 12, 0, 0),
                vec![utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 30, 0, 30, 0)],
            ),
            // 02:30 happens twice on 2026-10-25 in Berlin: it runs once, the first time.
            (
                "Europe/Berlin",
                "30 2 * * *",
                utc(2026, 10, 24, 12, 0, 0),
                utc(2026, 10, 26, 12, 0, 0),
                vec![utc(2026, 10, 25, 0, 30, 0), utc(2026, 10, 26, 1, 30, 0)],
            ),
            // UTC has no transitions.
            (
                "UTC",
                "0 3 * * *",
                utc(2026, 3, 28, 12, 0, 0),
                utc(2026, 3, 30, 12, 0, 0),
                vec![utc(2026, 3, 29, 3, 0, 0), utc(2026, 3, 30, 3, 0, 0)],
            ),
            // 02:00 on the 1st of every month, New York (EST in January, EDT in April).
            (
                "America/New_York",
                "0 2 1 * *",
                utc(2026, 1, 15, 0, 0, 0),
                utc(2026, 4, 15, 0, 0, 0),
                vec![
                    utc(2026, 2, 1, 7, 0, 0),
                    utc(2026, 3, 1, 7, 0, 0),
                    utc(2026, 4, 1, 6, 0, 0),
                ],
            ),
        ];
        for (tz, expr, from, to, want) in cases {
            let s = schedule(tz, &[("physical", expr)]);
            assert_eq!(&fired(&s, *from, *to, 60), want, "{tz} {expr}");
        }
    }

    #[test]
    fn second_level_schedules_fire_every_occurrence() {
        let s = schedule("UTC", &[("physical", "*/5 * * * * *")]);
        let from = utc(2026, 1, 1, 0, 0, 1);
        let got = fired(&s, from, from + chrono::Duration::seconds(20), 1);
        assert_eq!(
            got,
            vec![
                utc(2026, 1, 1, 0, 0, 5),
                utc(2026, 1, 1, 0, 0, 10),
                utc(2026, 1, 1, 0, 0, 15),
                utc(2026, 1, 1, 0, 0, 20)
            ]
        );
    }

    #[test]
    fn a_clock_jump_forward_fires_once_and_counts_the_missed() {
        let s = schedule("UTC", &[("physical", "0 * * * *")]);
        let mut t = Ticker::new(&s, utc(2026, 1, 1, 0, 30, 0));
        let due = t.due(&s, utc(2026, 1, 1, 5, 10, 0));
        assert_eq!(
            due,
            vec![Due {
                kind: JobKind::Physical,
                at: utc(2026, 1, 1, 5, 0, 0),
                missed: 4
            }]
        );
        assert_eq!(t.next_of(JobKind::Physical), Some(utc(2026, 1, 1, 6, 0, 0)));
        assert!(t.due(&s, utc(2026, 1, 1, 5, 59, 59)).is_empty());
    }

    #[test]
    fn a_clock_jump_backward_never_repeats_a_run() {
        let s = schedule("UTC", &[("physical", "0 * * * *")]);
        let mut t = Ticker::new(&s, utc(2026, 1, 1, 0, 30, 0));
        assert_eq!(t.due(&s, utc(2026, 1, 1, 1, 0, 1)).len(), 1);
        // Back 45 minutes, then forward again through 01:00.
        assert!(t.due(&s, utc(2026, 1, 1, 0, 15, 0)).is_empty());
        assert!(t.due(&s, utc(2026, 1, 1, 1, 0, 5)).is_empty());
        assert_eq!(t.due(&s, utc(2026, 1, 1, 2, 0, 0)).len(), 1);
    }

    #[test]
    fn occurrences_before_start_do_not_fire_and_jobs_are_independent() {
        let s = schedule(
            "UTC",
            &[("physical", "0 3 * * *"), ("logical", "30 3 * * 0")],
        );
        let start = utc(2026, 1, 3, 3, 0, 0); // a Saturday, exactly at 03:00
        let mut t = Ticker::new(&s, start);
        assert!(t.due(&s, start).is_empty());
        assert_eq!(t.next_wakeup(), Some(utc(2026, 1, 4, 3, 0, 0)));
        let due = t.due(&s, utc(2026, 1, 4, 3, 45, 0));
        let kinds: Vec<JobKind> = due.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, vec![JobKind::Physical, JobKind::Logical]);
        assert_eq!(
            t.next_of(JobKind::Logical),
            Some(utc(2026, 1, 11, 3, 30, 0))
        );
    }

    #[test]
    fn every_job_is_schedulable_and_bad_expressions_are_refused_naming_the_key() {
        for kind in JobKind::ALL {
            let mut cfg = ScheduleConfig::default();
            let v = Some("0 3 * * *".to_string());
            match kind {
                JobKind::Physical => cfg.physical = v,
                JobKind::Incremental => cfg.incremental = v,
                JobKind::Logical => cfg.logical = v,
                JobKind::Verify => cfg.verify = v,
                JobKind::Retention => cfg.retention = v,
                JobKind::Partitions => cfg.partitions = v,
                JobKind::Archive => cfg.archive = v,
            }
            let s = Schedule::from_config(&cfg).unwrap();
            assert_eq!(s.kinds().collect::<Vec<_>>(), vec![kind]);
        }
        let cfg = ScheduleConfig {
            physical: Some("0 25 * * *".into()),
            ..Default::default()
        };
        let e = Schedule::from_config(&cfg).err().unwrap().to_string();
        assert!(e.contains("schedule.physical"), "{e}");
    }
}
