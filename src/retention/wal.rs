//! Which archived WAL files retention keeps, and why: a pure function of (the `wal/`
//! listing, the kept physical backups, `retention.wal`, now).
//!
//! The rule: let F be the smallest start segment number of any kept physical backup
//! (the segment holding its `START WAL LOCATION`, where replay begins). A WAL file
//! (segment, `.partial`, `.backup`) is deleted only when its segment number is below F
//! (and, with `wal = "<duration>"`, it was archived longer ago than that) — on every
//! timeline alike. Segment numbers are positions in the one LSN space all timelines
//! share, so a kept backup can never replay anything below its own start, whichever
//! timeline path recovery follows. Above F, segments of a timeline no kept backup could
//! follow are kept too: proving a branch unreachable needs every kept backup's paths, and
//! a wrong proof loses a restore, while keeping them costs only the segments between F
//! and the branch's end, which go once F moves past them.
//!
//! Timeline history files are never deleted (recovery needs them to find any timeline
//! path), nor is anything under `wal/` that is not a WAL file name. With no complete
//! physical backup at all, nothing is deleted: the first backup, perhaps in flight, needs
//! the WAL from its start on. An in-flight backup later on never starts before the newest
//! complete one (physical backups hold one host-wide lock), which is always kept. Nor is
//! anything deleted while a backup that may be physical has an unreadable manifest: where
//! its WAL begins is unknown, and the backup is kept (it may be repaired and restored).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::Action;
use crate::config::WalRetention;
use crate::manifest::Manifest;
use crate::pg::wal::{classify, Segment, WalFileKind};
use crate::repo::{layout, ObjectMeta};

/// Where kept WAL begins: the start segment of the oldest kept physical backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepFrom {
    pub segment: String,
    pub backup: String,
    #[serde(skip)]
    pub segno: u64,
}

/// Consecutive WAL files on one timeline with one verdict and one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    /// `None` for objects that are not WAL files.
    pub timeline: Option<u32>,
    /// First and last segment (or the history file / object name).
    pub first: String,
    pub last: String,
    /// Objects in the range (segments, `.partial` and `.backup` files).
    pub files: usize,
    pub bytes: u64,
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalPlan {
    /// `None` when no kept physical backup bounds the WAL (nothing is deleted then).
    pub keep_from: Option<KeepFrom>,
    pub ranges: Vec<WalRange>,
    /// Keys to delete, oldest segment first.
    #[serde(skip)]
    pub delete: Vec<String>,
}

/// What bounds the deletable WAL.
enum Floor {
    /// No physical backup is kept: keep everything.
    NoBackup,
    /// A kept backup's manifest lacks its WAL position: keep everything.
    Unknown(String),
    /// A backup that may be physical has an unreadable manifest, so where its WAL
    /// begins is unknown: keep everything.
    Unreadable(String),
    /// Another repository's backups, which read WAL from this one, are unknown.
    UnknownElsewhere(String),
    Segment(KeepFrom),
}

fn floor(
    kept_physical: &[&Manifest],
    unreadable: &[&str],
    unknown_elsewhere: Option<&str>,
    seg_size: u64,
) -> Floor {
    if let Some(why) = unknown_elsewhere {
        return Floor::UnknownElsewhere(why.to_string());
    }
    if let Some(id) = unreadable.first() {
        return Floor::Unreadable(id.to_string());
    }
    let mut best: Option<KeepFrom> = None;
    for m in kept_physical {
        let Some(p) = &m.physical else {
            return Floor::Unknown(m.id.clone());
        };
        let segno = p.start_lsn.0 / seg_size;
        if best.as_ref().is_none_or(|b| segno < b.segno) {
            best = Some(KeepFrom {
                segment: Segment {
                    tli: p.timeline,
                    segno,
                }
                .name(seg_size),
                backup: m.id.clone(),
                segno,
            });
        }
    }
    match best {
        Some(k) => Floor::Segment(k),
        None => Floor::NoBackup,
    }
}

/// Sort key and position of one object: (group, timeline, segment, name).
type Pos = (u8, u32, u64, String);

/// A WAL file's name and kind; `None` for objects that are not WAL files.
type WalFile = Option<(String, WalFileKind)>;

fn position(o: &ObjectMeta, seg_size: u64) -> (Pos, WalFile) {
    let Some((name, _)) = layout::parse_wal_key(&o.key) else {
        return ((2, 0, 0, o.key.clone()), None);
    };
    let Some(kind) = classify(&name) else {
        return ((2, 0, 0, o.key.clone()), None);
    };
    if kind == WalFileKind::TimelineHistory {
        let tli = crate::pg::wal::history_timeline(&name).unwrap_or(0);
        return ((1, tli, 0, name.clone()), Some((name, kind)));
    }
    match Segment::parse(&name[..24], seg_size) {
        Some(s) => ((0, s.tli, s.segno, name.clone()), Some((name, kind))),
        None => ((2, 0, 0, o.key.clone()), None),
    }
}

/// Decide every object under `wal/`.
pub fn decide(
    objects: &[ObjectMeta],
    seg_size: u64,
    kept_physical: &[&Manifest],
    unreadable: &[&str],
    unknown_elsewhere: Option<&str>,
    rule: WalRetention,
    now: DateTime<Utc>,
) -> WalPlan {
    let floor = floor(kept_physical, unreadable, unknown_elsewhere, seg_size);
    let mut items: Vec<(Pos, &ObjectMeta, WalFile)> = objects
        .iter()
        .map(|o| {
            let (pos, what) = position(o, seg_size);
            (pos, o, what)
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut plan = WalPlan {
        keep_from: match &floor {
            Floor::Segment(k) => Some(k.clone()),
            _ => None,
        },
        ..Default::default()
    };
    for (pos, o, what) in items {
        let (action, reason) = match &what {
            None => (
                Action::Keep,
                "not a WAL file name: left alone".to_string(),
            ),
            Some((_, WalFileKind::TimelineHistory)) => (
                Action::Keep,
                "timeline history file: never deleted".to_string(),
            ),
            Some(_) => match &floor {
                Floor::NoBackup => (
                    Action::Keep,
                    "no complete physical backup exists: all WAL is kept until one does".into(),
                ),
                Floor::Unknown(id) => (
                    Action::Keep,
                    format!("kept backup {id} records no WAL position: all WAL is kept"),
                ),
                Floor::Unreadable(id) => (
                    Action::Keep,
                    format!("the manifest of backup {id} is unreadable, so the WAL it needs is unknown: all WAL is kept until it is repaired or the backup is deleted by hand"),
                ),
                Floor::UnknownElsewhere(why) => (
                    Action::Keep,
                    format!("{why}: all WAL is kept"),
                ),
                Floor::Segment(k) if pos.2 >= k.segno => (
                    Action::Keep,
                    format!(
                        "needed by kept physical backups: from {} (start of {}) on, on every timeline",
                        k.segment, k.backup
                    ),
                ),
                Floor::Segment(k) => match rule {
                    WalRetention::Within(d) => match o.last_modified {
                        None => (
                            Action::Keep,
                            "archive time unknown: kept (retention.wal is a duration)".into(),
                        ),
                        Some(t) if (now - t).to_std().map_or(true, |age| age <= d) => (
                            Action::Keep,
                            format!(
                                "archived within retention.wal = {}",
                                crate::text::config_duration(d)
                            ),
                        ),
                        Some(_) => (
                            Action::Delete,
                            format!(
                                "before {}, where the oldest kept physical backup {} starts, and archived more than {} ago",
                                k.segment,
                                k.backup,
                                crate::text::config_duration(d)
                            ),
                        ),
                    },
                    WalRetention::Backups => (
                        Action::Delete,
                        format!(
                            "before {}, where the oldest kept physical backup {} starts",
                            k.segment, k.backup
                        ),
                    ),
                },
            },
        };
        if action == Action::Delete {
            plan.delete.push(o.key.clone());
        }
        let (group, tli, segno, _) = &pos;
        let label = match (&what, group) {
            (Some((name, WalFileKind::TimelineHistory)), _) => name.clone(),
            (Some(_), 0) => Segment {
                tli: *tli,
                segno: *segno,
            }
            .name(seg_size),
            _ => o.key.clone(),
        };
        let timeline = what.as_ref().map(|_| *tli);
        let extends = plan.ranges.last_mut().filter(|r| {
            *group == 0
                && r.timeline == timeline
                && r.action == action
                && r.reason == reason
                && Segment::parse(&r.last, seg_size).is_some_and(|last| {
                    last.tli == *tli && (last.segno == *segno || last.segno + 1 == *segno)
                })
        });
        match extends {
            Some(r) => {
                r.last = label;
                r.files += 1;
                r.bytes += o.size;
            }
            None => plan.ranges.push(WalRange {
                timeline,
                first: label.clone(),
                last: label,
                files: 1,
                bytes: o.size,
                action,
                reason,
            }),
        }
    }
    plan
}
