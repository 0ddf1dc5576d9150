//! Which backup serves a recovery target, and what the recoverable window is.
//!
//! Pure functions of (manifests, WAL inventory, target): the restore command, `list`,
//! `info` and verification all ask the same questions and must get the same answers.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::inventory::{Gap, Span, WalInventory};
use super::target::{format_pg_time, Target};
use crate::manifest::{BackupKind, Manifest, Outcome, RestorePoint};
use crate::pg::wal::{Lsn, Segment};

/// A stretch of time any instant of which can be recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Earliest restorable time: the stop time of the oldest backup that starts it.
    pub from: DateTime<Utc>,
    pub from_backup: String,
    /// Archive time of the last continuous segment (WAL up to then can be replayed).
    pub to: Option<DateTime<Utc>>,
    pub to_segment: String,
    pub timeline: u32,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (end of backup {}) → {} (last archived WAL, segment {}) on timeline {}",
            format_pg_time(&self.from),
            self.from_backup,
            self.to
                .map(|t| format_pg_time(&t))
                .unwrap_or_else(|| "unknown".into()),
            self.to_segment,
            self.timeline
        )
    }
}

/// Why no backup can serve a target. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NoBackups,
    UnknownBackup(String),
    NotPhysical(String),
    NotOnTimeline {
        backup: String,
        timeline: u32,
    },
    BackupAfterTarget {
        backup: String,
        target: String,
    },
    BeforeWindow {
        target: String,
        windows: Vec<Window>,
    },
    AfterWindow {
        target: String,
        windows: Vec<Window>,
    },
    Gap {
        backup: String,
        gap: Gap,
        windows: Vec<Window>,
    },
}

fn list_windows(windows: &[Window]) -> String {
    if windows.is_empty() {
        return "none (no backup has the WAL it needs to become consistent)".into();
    }
    windows
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoBackups => write!(
                f,
                "the repository has no complete physical backup; take one with `backupctl backup --kind physical`"
            ),
            PlanError::UnknownBackup(id) => write!(
                f,
                "backup {id} does not exist or is incomplete (no manifest); `backupctl list` shows the backups"
            ),
            PlanError::NotPhysical(id) => write!(
                f,
                "backup {id} is a logical backup; restore it with `backupctl restore --logical {id} --dbname …`"
            ),
            PlanError::NotOnTimeline { backup, timeline } => write!(
                f,
                "backup {backup} is not on the history of timeline {timeline}; choose another backup or --target-timeline"
            ),
            PlanError::BackupAfterTarget { backup, target } => write!(
                f,
                "backup {backup} ends after the target {target}; a backup can only recover to points after its end: choose an older backup or a later target"
            ),
            PlanError::BeforeWindow { target, windows } => write!(
                f,
                "the target {target} is before the earliest restorable point; recoverable window: {}",
                list_windows(windows)
            ),
            PlanError::AfterWindow { target, windows } => write!(
                f,
                "the target {target} is after the last archived WAL; recoverable window: {}. \
                 Wait for more WAL to be archived (SELECT pg_switch_wal()) or choose a target inside the window",
                list_windows(windows)
            ),
            PlanError::Gap { backup, gap, windows } => write!(
                f,
                "the WAL needed from backup {backup} to the target is not continuous: {gap}; \
                 recoverable window: {}",
                list_windows(windows)
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// The chosen backup, the timeline path recovery follows, and why.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    pub backup: &'a Manifest,
    pub path: Vec<Span>,
    pub timeline: u32,
    pub reason: String,
    /// The segments recovery must find, as `first..=last` runs on one timeline each
    /// (names): from the backup's start segment to the segment the target lies in (or
    /// the newest archived for "latest", the stop segment for "immediate"). wal-fetch
    /// stops recovery when one of them is missing instead of letting it end early.
    pub expected: Vec<(String, String)>,
}

/// `first..=last` of `path` as runs of segment names on one timeline each.
pub fn expected_runs(
    inv: &WalInventory,
    path: &[Span],
    first: u64,
    last: u64,
) -> Vec<(String, String)> {
    let mut runs: Vec<(u32, u64, u64)> = vec![];
    for segno in first..=last {
        let tli = inv.timeline_for(path, segno);
        match runs.last_mut() {
            Some((t, _, end)) if *t == tli && *end + 1 == segno => *end = segno,
            _ => runs.push((tli, segno, segno)),
        }
    }
    runs.into_iter()
        .map(|(tli, a, z)| (inv.name(tli, a), inv.name(tli, z)))
        .collect()
}

struct Pos {
    start_seg: u64,
    stop_seg: u64,
}

/// Start/stop segments of a physical backup, if it lies on `path`.
fn on_path(m: &Manifest, inv: &WalInventory, path: &[Span]) -> Option<Pos> {
    let p = m.physical.as_ref()?;
    let idx = path.iter().position(|s| s.tli == p.timeline)?;
    if let Some(next) = path.get(idx + 1) {
        if p.stop_lsn > next.begin {
            return None; // taken on a branch the path abandoned
        }
    }
    let seg = inv.seg_size;
    Some(Pos {
        start_seg: p.start_lsn.0 / seg,
        stop_seg: p.stop_lsn.0.saturating_sub(1) / seg,
    })
}

fn physical(backups: &[Manifest]) -> impl Iterator<Item = &Manifest> {
    backups
        .iter()
        .filter(|m| m.kind == BackupKind::Physical && m.physical.is_some())
}

/// The recoverable windows along the path to timeline `tli`, oldest first.
pub fn windows(backups: &[Manifest], inv: &WalInventory, tli: u32) -> Vec<Window> {
    let path = inv.path_to(tli);
    let mut out: Vec<(Window, u64)> = vec![];
    let mut sorted: Vec<&Manifest> = physical(backups).collect();
    sorted.sort_by_key(|m| m.stop_time);
    for m in sorted {
        let Some(pos) = on_path(m, inv, &path) else {
            continue;
        };
        let Some((end, at)) = inv.continuous_end(&path, pos.start_seg) else {
            continue;
        };
        if end < pos.stop_seg {
            continue;
        }
        // Extends the previous window when it reaches this backup's WAL.
        if let Some((last, last_end)) = out.last_mut() {
            if *last_end >= pos.start_seg {
                if end > *last_end {
                    *last_end = end;
                    last.to = at;
                    last.to_segment = inv.name(inv.timeline_for(&path, end), end);
                }
                continue;
            }
        }
        out.push((
            Window {
                from: m.stop_time,
                from_backup: m.id.clone(),
                to: at,
                to_segment: inv.name(inv.timeline_for(&path, end), end),
                timeline: tli,
            },
            end,
        ));
    }
    out.into_iter().map(|(w, _)| w).collect()
}

/// Choose the backup for `target`: `requested` if given, else the newest physical
/// backup ending before the target whose WAL from its start to the target is continuous
/// and whose verification did not fail (a failed one only when no other can serve, and
/// the reason says so; the reason also names failed ones skipped).
pub fn choose<'a>(
    backups: &'a [Manifest],
    inv: &WalInventory,
    target: &Target,
    requested: Option<&str>,
    target_timeline: Option<u32>,
    restore_points: &HashMap<String, RestorePoint>,
) -> Result<Choice<'a>, PlanError> {
    let newest_backup_tli = physical(backups)
        .max_by_key(|m| m.stop_time)
        .and_then(|m| m.physical.as_ref().map(|p| p.timeline));
    let Some(tli) = target_timeline
        .or(inv.current_timeline())
        .or(newest_backup_tli)
    else {
        return Err(PlanError::NoBackups);
    };
    let path = inv.path_to(tli);
    let windows = windows(backups, inv, tli);
    let seg = inv.seg_size;

    // Where the target lies, when backupctl can know it.
    let rp = match target {
        Target::Name(n) => restore_points.get(n),
        _ => None,
    };
    let target_lsn: Option<Lsn> = match target {
        Target::Lsn(l) => Some(*l),
        Target::Name(_) => rp.map(|r| r.lsn),
        _ => None,
    };
    let ends_before = |m: &Manifest| -> bool {
        let p = m.physical.as_ref().expect("physical");
        match target {
            Target::Time(t) => m.stop_time <= *t,
            _ => target_lsn.is_none_or(|l| p.stop_lsn <= l),
        }
    };

    // Whether `m` can serve the target: its own WAL and the WAL on to the target are
    // archived without gaps. Gives where its WAL begins and where replay ends.
    let serve = |m: &Manifest| -> Result<(Pos, Option<u64>), PlanError> {
        let pos = on_path(m, inv, &path).expect("checked on path");
        let gap_err = |gap: Gap| PlanError::Gap {
            backup: m.id.clone(),
            gap,
            windows: windows.clone(),
        };
        if let Some(g) = inv
            .gaps(&path, pos.start_seg, pos.stop_seg)
            .into_iter()
            .next()
        {
            return Err(gap_err(g));
        }
        let end_seg: Option<u64> = match target {
            Target::Time(t) => match inv.first_archived_after(&path, pos.stop_seg, *t) {
                Some(e) => Some(e),
                None => {
                    return Err(PlanError::AfterWindow {
                        target: target.describe(),
                        windows: windows.clone(),
                    })
                }
            },
            Target::Lsn(_) | Target::Name(_) => match target_lsn {
                Some(l) => {
                    let e = l.0 / seg;
                    if inv.newest_on_path(&path).is_none_or(|(_, n)| n < e) {
                        return Err(PlanError::AfterWindow {
                            target: target.describe(),
                            windows: windows.clone(),
                        });
                    }
                    Some(e)
                }
                None => None,
            },
            Target::Immediate => None,
            Target::Latest => inv.newest_on_path(&path).map(|(_, n)| n),
        };
        if let Some(e) = end_seg {
            if let Some(g) = inv.gaps(&path, pos.stop_seg, e).into_iter().next() {
                return Err(gap_err(g));
            }
        }
        Ok((pos, end_seg))
    };

    let (chosen, pos, end_seg, verification_note) = if let Some(id) = requested {
        let m = backups
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| PlanError::UnknownBackup(id.into()))?;
        if m.kind != BackupKind::Physical {
            return Err(PlanError::NotPhysical(id.into()));
        }
        if on_path(m, inv, &path).is_none() {
            return Err(PlanError::NotOnTimeline {
                backup: id.into(),
                timeline: tli,
            });
        }
        if !ends_before(m) {
            return Err(PlanError::BackupAfterTarget {
                backup: id.into(),
                target: target.describe(),
            });
        }
        let (pos, end) = serve(m)?;
        let note = failed_verification(m)
            .map(|f| format!("; WARNING: it FAILED verification ({f})"))
            .unwrap_or_default();
        (m, pos, end, note)
    } else {
        let mut candidates: Vec<&Manifest> = physical(backups)
            .filter(|m| on_path(m, inv, &path).is_some())
            .collect();
        if candidates.is_empty() {
            return Err(PlanError::NoBackups);
        }
        candidates.sort_by_key(|m| std::cmp::Reverse(m.stop_time));
        candidates.retain(|m| ends_before(m));
        if candidates.is_empty() {
            return Err(PlanError::BeforeWindow {
                target: target.describe(),
                windows: windows.clone(),
            });
        }
        // A backup whose test restore failed is not chosen while one that did not fail
        // (verified or never verified) can serve the target; the newest failed one is
        // used only when nothing else can, and the reason says so loudly.
        let mut first_err = None;
        let mut skipped: Vec<String> = vec![];
        let mut fallback = None;
        let mut picked = None;
        for m in &candidates {
            match serve(m) {
                Ok((pos, end)) => match failed_verification(m) {
                    None => {
                        picked = Some((*m, pos, end));
                        break;
                    }
                    Some(f) => {
                        skipped.push(format!("backup {} ({f})", m.id));
                        if fallback.is_none() {
                            fallback = Some((*m, pos, end, f));
                        }
                    }
                },
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (picked, fallback) {
            (Some((m, pos, end)), _) => {
                let note = if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; skipped newer {} because {} failed verification: {}",
                        if skipped.len() == 1 { "backup" } else { "backups" },
                        if skipped.len() == 1 { "it" } else { "they" },
                        skipped.join(", ")
                    )
                };
                (m, pos, end, note)
            }
            (None, Some((m, pos, end, f))) => (
                m,
                pos,
                end,
                format!(
                    "; WARNING: it FAILED verification ({f}) and no backup that did not fail verification can serve {}: check the restored data before using it",
                    target.describe()
                ),
            ),
            (None, None) => return Err(first_err.expect("a candidate failed to serve")),
        }
    };

    let p = chosen.physical.as_ref().expect("physical");
    let mut reason = if requested.is_some() {
        format!("backup {} was requested", chosen.id)
    } else {
        format!(
            "backup {} is the newest physical backup that ends before {}{} (stop time {}, stop LSN {})",
            chosen.id,
            target.describe(),
            if verification_note.is_empty() {
                ""
            } else if failed_verification(chosen).is_some() {
                " (of those that can serve it)"
            } else {
                " and did not fail verification"
            },
            format_pg_time(&chosen.stop_time),
            p.stop_lsn
        )
    };
    reason.push_str(&verification_note);
    let last = end_seg.unwrap_or(pos.stop_seg);
    reason.push_str(&format!(
        "; WAL is continuous from {} to {}",
        Segment {
            tli: p.timeline,
            segno: pos.start_seg
        }
        .name(seg),
        inv.name(inv.timeline_for(&path, last), last),
    ));
    if matches!(target, Target::Name(_)) && rp.is_none() {
        reason.push_str(
            "; the restore point was not created by backupctl, so PostgreSQL will search the WAL for it",
        );
    }
    let expected = expected_runs(inv, &path, pos.start_seg, last);
    Ok(Choice {
        backup: chosen,
        path,
        timeline: tli,
        reason,
        expected,
    })
}

/// When `m`'s last test restore failed: when, and its first failure.
fn failed_verification(m: &Manifest) -> Option<String> {
    let v = m
        .verification
        .as_ref()
        .filter(|v| v.outcome == Outcome::Failed)?;
    Some(format!(
        "verification at {} failed: {}",
        format_pg_time(&v.time),
        v.failures
            .first()
            .map_or("no failure recorded", String::as_str)
    ))
}

/// Restore points recorded in manifests (the pre-migration hook), by name.
pub fn restore_points(backups: &[Manifest]) -> HashMap<String, RestorePoint> {
    backups
        .iter()
        .filter_map(|m| m.restore_point.clone())
        .map(|rp| (rp.name.clone(), rp))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{manifest, physical_info, wal_inventory, SEG};
    use chrono::TimeZone;

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 10, min, 0).unwrap()
    }

    /// A backup on `tli` from segment `start` to `stop`, ending at minute `stop_min`.
    fn backup(id: &str, tli: u32, start: u64, stop: u64, stop_min: u32) -> Manifest {
        let start_time = t(stop_min.saturating_sub(1));
        let mut m = manifest(id, BackupKind::Physical, start_time, t(stop_min));
        m.physical = Some(physical_info(tli, start, stop));
        m
    }

    /// Segments archived at minute = segment number (so segment 7 holds WAL up to 10:07).
    fn inv(segs: &[(u32, u64)], histories: &[(u32, &str)]) -> WalInventory {
        wal_inventory(segs, histories, |segno| Some(t(segno as u32)))
    }

    fn segs(tli: u32, r: std::ops::RangeInclusive<u64>) -> Vec<(u32, u64)> {
        r.map(|s| (tli, s)).collect()
    }

    #[test]
    fn newest_backup_before_the_target_wins() {
        let backups = vec![
            backup("a", 1, 2, 2, 2),
            backup("b", 1, 5, 5, 5),
            backup("c", 1, 8, 8, 8),
        ];
        let i = inv(&segs(1, 2..=10), &[]);
        let none = HashMap::new();
        let c = choose(&backups, &i, &Target::Time(t(6)), None, None, &none).unwrap();
        assert_eq!(c.backup.id, "b");
        assert!(c.reason.contains("newest physical backup"), "{}", c.reason);
        let c = choose(&backups, &i, &Target::Time(t(9)), None, None, &none).unwrap();
        assert_eq!(c.backup.id, "c");
        let c = choose(&backups, &i, &Target::Immediate, None, None, &none).unwrap();
        assert_eq!(c.backup.id, "c");
        let c = choose(&backups, &i, &Target::Lsn(Lsn(6 * SEG)), None, None, &none).unwrap();
        assert_eq!(c.backup.id, "b");
    }

    #[test]
    fn targets_outside_the_window_print_it() {
        let backups = vec![backup("a", 1, 2, 2, 2)];
        let i = inv(&segs(1, 2..=6), &[]);
        let none = HashMap::new();
        let e = choose(&backups, &i, &Target::Time(t(1)), None, None, &none).unwrap_err();
        assert!(matches!(e, PlanError::BeforeWindow { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("2026-11-22 10:02:00") && msg.contains("10:06:00"),
            "{msg}"
        );
        let e = choose(&backups, &i, &Target::Time(t(30)), None, None, &none).unwrap_err();
        assert!(matches!(e, PlanError::AfterWindow { .. }), "{e}");
        let e = choose(&backups, &i, &Target::Lsn(Lsn(9 * SEG)), None, None, &none).unwrap_err();
        assert!(matches!(e, PlanError::AfterWindow { .. }), "{e}");
        assert_eq!(
            choose(&[], &i, &Target::Latest, None, None, &none).unwrap_err(),
            PlanError::NoBackups
        );
    }

    #[test]
    fn a_gap_before_the_target_is_refused_and_named() {
        let backups = vec![backup("a", 1, 2, 2, 2)];
        let mut s = segs(1, 2..=9);
        s.retain(|&(_, n)| n != 5);
        let i = inv(&s, &[]);
        let none = HashMap::new();
        let e = choose(&backups, &i, &Target::Time(t(7)), None, None, &none).unwrap_err();
        let PlanError::Gap { gap, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(gap.first_missing, "000000010000000000000005");
        assert!(e.to_string().contains("000000010000000000000004"));
        // Before the gap is fine.
        assert!(choose(&backups, &i, &Target::Time(t(3)), None, None, &none).is_ok());
        // "latest" must not silently stop at the gap.
        assert!(matches!(
            choose(&backups, &i, &Target::Latest, None, None, &none),
            Err(PlanError::Gap { .. })
        ));
    }

    #[test]
    fn backup_without_its_own_wal_is_not_used() {
        let backups = vec![backup("a", 1, 2, 3, 3)];
        let i = inv(&[(1, 2), (1, 4)], &[]);
        let e = choose(
            &backups,
            &i,
            &Target::Immediate,
            None,
            None,
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::Gap { .. }));
        assert!(windows(&backups, &i, 1).is_empty());
    }

    #[test]
    fn requested_backup_is_checked() {
        let backups = vec![backup("a", 1, 2, 2, 2), backup("b", 1, 5, 5, 5)];
        let i = inv(&segs(1, 2..=8), &[]);
        let none = HashMap::new();
        let c = choose(&backups, &i, &Target::Time(t(7)), Some("a"), None, &none).unwrap();
        assert_eq!(c.backup.id, "a");
        assert!(matches!(
            choose(&backups, &i, &Target::Time(t(3)), Some("b"), None, &none),
            Err(PlanError::BackupAfterTarget { .. })
        ));
        assert!(matches!(
            choose(&backups, &i, &Target::Time(t(7)), Some("zz"), None, &none),
            Err(PlanError::UnknownBackup(_))
        ));
    }

    #[test]
    fn expected_segments_follow_the_timeline_path() {
        // Timeline 2 branched from 1 inside segment 6: segment 6 onwards comes from 2.
        let h = "1\t0/6000100\tbefore 2026-11-22 10:06:00+00\n";
        let mut s = segs(1, 2..=6);
        s.extend(segs(2, 6..=9));
        let i = inv(&s, &[(2, h)]);
        let backups = vec![backup("a", 1, 2, 3, 3)];
        let none = HashMap::new();
        let c = choose(&backups, &i, &Target::Latest, None, Some(2), &none).unwrap();
        assert_eq!(
            c.expected,
            vec![
                (
                    "000000010000000000000002".to_string(),
                    "000000010000000000000005".to_string()
                ),
                (
                    "000000020000000000000006".to_string(),
                    "000000020000000000000009".to_string()
                ),
            ]
        );
        let c = choose(&backups, &i, &Target::Immediate, None, Some(2), &none).unwrap();
        assert_eq!(
            c.expected,
            vec![(
                "000000010000000000000002".to_string(),
                "000000010000000000000003".to_string()
            )]
        );
    }

    #[test]
    fn timelines_old_branch_backups_and_windows() {
        // Timeline 2 branched from 1 in segment 6. Backup "late1" was taken on timeline 1
        // after the branch point: it is not on timeline 2's history.
        let h = "1\t0/6000100\tbefore 2026-11-22 10:06:00+00\n";
        let mut s = segs(1, 2..=9);
        s.extend(segs(2, 6..=8));
        let mut i = inv(&s, &[(2, h)]);
        // Timeline 2 is the one archived last (production is on it); timeline 1's late
        // segments came from the old primary before it stopped.
        for (segno, at) in i.segments.get_mut(&2).unwrap().iter_mut() {
            *at = Some(t(20 + *segno as u32));
        }
        let backups = vec![
            backup("a", 1, 2, 2, 2),
            backup("late1", 1, 7, 7, 7),
            backup("on2", 2, 7, 7, 7),
        ];
        let none = HashMap::new();
        let c = choose(&backups, &i, &Target::Time(t(8)), None, None, &none).unwrap();
        assert_eq!(c.backup.id, "on2");
        assert_eq!(c.timeline, 2);
        // Explicitly following timeline 1 uses its own late backup.
        let c = choose(&backups, &i, &Target::Time(t(8)), None, Some(1), &none).unwrap();
        assert_eq!(c.backup.id, "late1");
        let w = windows(&backups, &i, 2);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].from_backup, "a");
        assert_eq!(w[0].to_segment, "000000020000000000000008");
    }

    #[test]
    fn windows_split_at_gaps() {
        let backups = vec![backup("a", 1, 2, 2, 2), backup("b", 1, 7, 7, 7)];
        let mut s = segs(1, 2..=9);
        s.retain(|&(_, n)| n != 5);
        let i = inv(&s, &[]);
        let w = windows(&backups, &i, 1);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].from_backup.as_str(), w[0].to_segment.as_str()),
            ("a", "000000010000000000000004")
        );
        assert_eq!(
            (w[1].from_backup.as_str(), w[1].to_segment.as_str()),
            ("b", "000000010000000000000009")
        );
    }

    #[test]
    fn named_restore_points_recorded_by_backups() {
        let mut b = backup("b", 1, 5, 5, 5);
        b.restore_point = Some(RestorePoint {
            name: "b".into(),
            lsn: Lsn(5 * SEG + 500),
            time: t(5),
        });
        let backups = vec![backup("a", 1, 2, 2, 2), b];
        let i = inv(&segs(1, 2..=8), &[]);
        let rps = restore_points(&backups);
        let c = choose(&backups, &i, &Target::Name("b".into()), None, None, &rps).unwrap();
        assert_eq!(c.backup.id, "b");
        let c = choose(
            &backups,
            &i,
            &Target::Name("other".into()),
            None,
            None,
            &rps,
        )
        .unwrap();
        assert!(c.reason.contains("search the WAL"), "{}", c.reason);
    }

    /// A backup (as [`backup`]) whose verification had `outcome`.
    fn verified(id: &str, start: u64, stop_min: u32, outcome: Option<Outcome>) -> Manifest {
        let mut m = backup(id, 1, start, start, stop_min);
        m.verification = outcome.map(|o| {
            let mut v = crate::test_fixtures::verification(t(30), o, 1.0);
            if o == Outcome::Failed {
                v.failures = vec!["object base.0.tar failed its checksum".into()];
            }
            v
        });
        m
    }

    #[test]
    fn backups_that_failed_verification_are_skipped_while_others_can_serve() {
        use Outcome::{Failed, Ok as Good};
        let i = inv(&segs(1, 2..=12), &[]);
        let none = HashMap::new();
        // (case, backups (id, start segment = stop minute, verification), target,
        //  --backup, expected choice, pieces of the reason, pieces it must not have)
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, u64, Option<Outcome>)>,
            Target,
            Option<&'a str>,
            &'a str,
            Vec<&'a str>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "no verification failed: the newest",
                vec![("a", 2, Some(Good)), ("b", 5, None)],
                Target::Latest,
                None,
                "b",
                vec!["newest physical backup that ends before"],
                vec!["skipped", "FAILED", "failed verification"],
            ),
            (
                "the newest failed: the older unverified one, naming the skipped",
                vec![("a", 2, None), ("b", 5, Some(Failed))],
                Target::Latest,
                None,
                "a",
                vec![
                    "and did not fail verification",
                    "skipped newer backup because it failed verification: backup b (verification at 2026-11-22 10:30:00",
                    "failed its checksum",
                ],
                vec!["WARNING"],
            ),
            (
                "two newer failed: both named",
                vec![("a", 2, Some(Good)), ("b", 5, Some(Failed)), ("c", 8, Some(Failed))],
                Target::Time(t(10)),
                None,
                "a",
                vec!["skipped newer backups because they failed verification: backup c", ", backup b ("],
                vec!["WARNING"],
            ),
            (
                "a failed one after the target does not matter",
                vec![("a", 2, None), ("b", 5, None), ("c", 8, Some(Failed))],
                Target::Time(t(6)),
                None,
                "b",
                vec!["newest physical backup"],
                vec!["skipped", "FAILED"],
            ),
            (
                "only failed ones can serve: the newest, loudly",
                vec![("a", 2, Some(Failed)), ("b", 5, Some(Failed))],
                Target::Latest,
                None,
                "b",
                vec!["WARNING: it FAILED verification", "no backup that did not fail verification can serve"],
                vec!["skipped"],
            ),
            (
                "the only good one ends after the target: the failed one, loudly",
                vec![("a", 2, Some(Failed)), ("b", 5, Some(Good))],
                Target::Time(t(3)),
                None,
                "a",
                vec!["WARNING: it FAILED verification"],
                vec![],
            ),
            (
                "--backup forces a failed one, and says so",
                vec![("a", 2, None), ("b", 5, Some(Failed))],
                Target::Latest,
                Some("b"),
                "b",
                vec!["backup b was requested", "WARNING: it FAILED verification"],
                vec![],
            ),
        ];
        for (case, specs, target, requested, want, has, lacks) in cases {
            let backups: Vec<Manifest> = specs
                .iter()
                .map(|(id, start, o)| verified(id, *start, *start as u32, *o))
                .collect();
            let c = choose(&backups, &i, &target, requested, None, &none)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(c.backup.id, want, "{case}: {}", c.reason);
            for piece in has {
                assert!(
                    c.reason.contains(piece),
                    "{case}: {piece:?} missing in {}",
                    c.reason
                );
            }
            for piece in lacks {
                assert!(
                    !c.reason.contains(piece),
                    "{case}: {piece:?} in {}",
                    c.reason
                );
            }
        }
    }

    #[test]
    fn a_gap_is_reported_even_when_a_failed_backup_is_skipped() {
        let mut s = segs(1, 2..=9);
        s.retain(|&(_, n)| n != 7);
        let i = inv(&s, &[]);
        let backups = vec![
            verified("a", 2, 2, None),
            verified("b", 5, 5, Some(Outcome::Failed)),
        ];
        let e = choose(&backups, &i, &Target::Latest, None, None, &HashMap::new()).unwrap_err();
        assert!(matches!(e, PlanError::Gap { .. }), "{e}");
    }
}
