//! What WAL the repository holds, and whether it is continuous along a timeline path.
//!
//! PostgreSQL replays segment `s` from the newest timeline on the path whose first
//! segment is at or before `s` (its `XLogFileReadAnyTLI`): the segment holding a switch
//! point comes from the new timeline. Continuity is judged the same way, so a gap
//! reported here is a segment recovery would really miss.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::pg::wal::{
    classify, history_timeline, parse_history, HistoryEntry, Lsn, Segment, WalFileKind,
};
use crate::repo::{layout, ObjectMeta, Repository, RepositoryExt};

/// One timeline on a path: WAL from `begin` on (until the next span's begin) is read from `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub tli: u32,
    pub begin: Lsn,
}

/// Segments missing from a range: `first_missing ..= last_missing`, after `last_present`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    pub last_present: Option<String>,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first_missing == self.last_missing {
            write!(f, "segment {} is missing", self.first_missing)?;
        } else {
            write!(
                f,
                "segments {} to {} are missing",
                self.first_missing, self.last_missing
            )?;
        }
        if let Some(p) = &self.last_present {
            write!(f, " (last present before it: {p})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct WalInventory {
    pub seg_size: u64,
    /// Timeline → segment number → when it was archived.
    pub segments: BTreeMap<u32, BTreeMap<u64, Option<DateTime<Utc>>>>,
    /// Timelines with a `.partial` segment, by segment number.
    pub partials: BTreeSet<(u32, u64)>,
    /// Parsed history files by timeline.
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    /// When each timeline's history file was archived (the timeline's creation).
    pub history_times: BTreeMap<u32, Option<DateTime<Utc>>>,
    /// Total stored bytes of WAL objects.
    pub stored_bytes: u64,
}

impl WalInventory {
    /// Build from a listing of `wal/`; history file contents come from `histories`.
    pub fn from_listing(
        objects: &[ObjectMeta],
        seg_size: u64,
        histories: BTreeMap<u32, Vec<HistoryEntry>>,
    ) -> WalInventory {
        let mut inv = WalInventory {
            seg_size,
            histories,
            ..Default::default()
        };
        for o in objects {
            let Some((name, _)) = layout::parse_wal_key(&o.key) else {
                continue;
            };
            inv.stored_bytes += o.size;
            match classify(&name) {
                Some(WalFileKind::Segment) => {
                    if let Some(seg) = Segment::parse(&name, seg_size) {
                        inv.segments
                            .entry(seg.tli)
                            .or_default()
                            .insert(seg.segno, o.last_modified);
                    }
                }
                Some(WalFileKind::Partial) => {
                    if let Some(seg) = Segment::parse(&name[..24], seg_size) {
                        inv.partials.insert((seg.tli, seg.segno));
                    }
                }
                _ => {
                    if let Some(tli) = history_timeline(&name) {
                        inv.history_times.insert(tli, o.last_modified);
                    }
                }
            }
        }
        inv
    }

    /// List `wal/` and read every history file.
    pub async fn load(repo: &dyn Repository, seg_size: u64) -> anyhow::Result<WalInventory> {
        let objects = repo
            .list(layout::WAL_PREFIX)
            .await
            .context("list archived WAL")?;
        Self::load_from(repo, &objects, seg_size).await
    }

    /// Build from a listing of `wal/` the caller already holds; history files are read
    /// from `repo`.
    pub async fn load_from(
        repo: &dyn Repository,
        objects: &[ObjectMeta],
        seg_size: u64,
    ) -> anyhow::Result<WalInventory> {
        let mut histories = BTreeMap::new();
        for o in objects {
            let Some(name) = o.key.strip_prefix(layout::WAL_PREFIX) else {
                continue;
            };
            if let Some(tli) = history_timeline(name) {
                let bytes = repo
                    .get_bytes(&o.key)
                    .await
                    .with_context(|| format!("read {}", o.key))?;
                let text = String::from_utf8_lossy(&bytes);
                let parsed = parse_history(&text)
                    .map_err(|e| anyhow::anyhow!("history file {} is invalid: {e}", o.key))?;
                histories.insert(tli, parsed);
            }
        }
        Ok(Self::from_listing(objects, seg_size, histories))
    }

    /// The timeline the cluster is on now: the one whose WAL (a segment, or its history
    /// file) was archived last. Not simply the highest: a copy restored from this
    /// repository that promoted and archived here (before `restore` kept copies from
    /// archiving) leaves a higher timeline that production never followed, and "latest"
    /// must keep following production. Without archive times, the highest timeline.
    pub fn current_timeline(&self) -> Option<u32> {
        let mut newest: Option<(DateTime<Utc>, u32)> = None;
        let times = self
            .segments
            .iter()
            .flat_map(|(tli, segs)| segs.values().map(move |t| (*tli, *t)))
            .chain(self.history_times.iter().map(|(tli, t)| (*tli, *t)));
        for (tli, t) in times {
            if let Some(t) = t {
                if newest.is_none_or(|(n, ntli)| (t, tli) > (n, ntli)) {
                    newest = Some((t, tli));
                }
            }
        }
        newest
            .map(|(_, tli)| tli)
            .or_else(|| self.latest_timeline())
    }

    /// The newest timeline the repository knows (history files or segments).
    pub fn latest_timeline(&self) -> Option<u32> {
        let a = self.histories.keys().max().copied();
        let b = self.segments.keys().max().copied();
        a.max(b)
    }

    /// The timeline path that ends on `tli`: its ancestors from its history file, oldest
    /// first, each with the LSN it begins at.
    pub fn path_to(&self, tli: u32) -> Vec<Span> {
        let mut spans = vec![];
        let mut begin = Lsn(0);
        if let Some(h) = self.histories.get(&tli) {
            for e in h {
                spans.push(Span {
                    tli: e.parent,
                    begin,
                });
                begin = e.switch_lsn;
            }
        }
        spans.push(Span { tli, begin });
        spans
    }

    /// The timeline segment `segno` is read from on `path`.
    pub fn timeline_for(&self, path: &[Span], segno: u64) -> u32 {
        path.iter()
            .rev()
            .find(|s| s.begin.0 / self.seg_size <= segno)
            .map(|s| s.tli)
            .unwrap_or(path[0].tli)
    }

    pub fn has(&self, tli: u32, segno: u64) -> bool {
        self.segments
            .get(&tli)
            .is_some_and(|m| m.contains_key(&segno))
    }

    pub fn archived_at(&self, tli: u32, segno: u64) -> Option<DateTime<Utc>> {
        self.segments
            .get(&tli)
            .and_then(|m| m.get(&segno).copied().flatten())
    }

    pub fn name(&self, tli: u32, segno: u64) -> String {
        Segment { tli, segno }.name(self.seg_size)
    }

    /// Every gap on `path` between segments `from` and `to` inclusive.
    pub fn gaps(&self, path: &[Span], from: u64, to: u64) -> Vec<Gap> {
        let mut gaps = vec![];
        let mut last_present: Option<String> = None;
        let mut open: Option<(String, String)> = None;
        for segno in from..=to {
            let tli = self.timeline_for(path, segno);
            let name = self.name(tli, segno);
            if self.has(tli, segno) {
                if let Some((first, last)) = open.take() {
                    gaps.push(Gap {
                        first_missing: first,
                        last_missing: last,
                        last_present: last_present.clone(),
                    });
                }
                last_present = Some(name);
            } else {
                match &mut open {
                    Some((_, last)) => *last = name,
                    None => open = Some((name.clone(), name)),
                }
            }
        }
        if let Some((first, last)) = open {
            gaps.push(Gap {
                first_missing: first,
                last_missing: last,
                last_present,
            });
        }
        gaps
    }

    /// The last segment reachable without a gap from `from` on `path`, with its archive
    /// time; `None` if `from` itself is missing.
    pub fn continuous_end(&self, path: &[Span], from: u64) -> Option<(u64, Option<DateTime<Utc>>)> {
        let mut end = None;
        let mut segno = from;
        loop {
            let tli = self.timeline_for(path, segno);
            if !self.has(tli, segno) {
                return end;
            }
            end = Some((segno, self.archived_at(tli, segno)));
            segno += 1;
        }
    }

    /// The newest segment on `path` (any, ignoring gaps).
    pub fn newest_on_path(&self, path: &[Span]) -> Option<(u32, u64)> {
        let mut best: Option<(u32, u64)> = None;
        for (i, span) in path.iter().enumerate() {
            let Some(segs) = self.segments.get(&span.tli) else {
                continue;
            };
            let lo = span.begin.0 / self.seg_size;
            let hi = path.get(i + 1).map(|n| n.begin.0 / self.seg_size);
            for &segno in segs.keys() {
                let in_span = segno >= lo && hi.is_none_or(|h| segno < h);
                if in_span && best.is_none_or(|(_, b)| segno > b) {
                    best = Some((span.tli, segno));
                }
            }
        }
        best
    }

    /// First segment after `from` on `path` archived at or after `t` (so it holds WAL
    /// written up to at least `t`).
    pub fn first_archived_after(&self, path: &[Span], from: u64, t: DateTime<Utc>) -> Option<u64> {
        let (newest_tli, newest) = self.newest_on_path(path)?;
        let _ = newest_tli;
        (from..=newest).find(|&segno| {
            let tli = self.timeline_for(path, segno);
            self.archived_at(tli, segno).is_some_and(|at| at >= t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::wal_inventory;
    use chrono::TimeZone;

    fn at(min: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 11, 22, 10, min, 0).unwrap())
    }

    fn inv(segs: &[(u32, u64)], histories: &[(u32, &str)]) -> WalInventory {
        wal_inventory(segs, histories, |segno| at(segno as u32))
    }

    #[test]
    fn single_timeline_gaps() {
        let i = inv(&[(1, 1), (1, 2), (1, 4), (1, 5), (1, 8)], &[]);
        let path = i.path_to(1);
        assert!(i.gaps(&path, 1, 2).is_empty());
        let gaps = i.gaps(&path, 1, 8);
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[0].first_missing, "000000010000000000000003");
        assert_eq!(
            gaps[0].last_present.as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(gaps[1].first_missing, "000000010000000000000006");
        assert_eq!(gaps[1].last_missing, "000000010000000000000007");
        assert_eq!(i.continuous_end(&path, 1).unwrap().0, 2);
        assert_eq!(i.continuous_end(&path, 3), None);
        assert!(gaps[1].to_string().contains("to 000000010000000000000007"));
    }

    #[test]
    fn current_timeline_is_the_one_archived_last_not_the_highest() {
        // A restored copy branched timeline 2 at segment 4 and archived two segments;
        // production went on archiving timeline 1 afterwards (regression: "latest"
        // followed the copy's timeline 2 and lost production's newer data).
        let h = "1\t0/4000100\tno recovery target specified\n";
        let mut i = inv(
            &[(1, 1), (1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (1, 6)],
            &[(2, h)],
        );
        i.segments.get_mut(&2).unwrap().insert(5, at(5));
        assert_eq!(i.latest_timeline(), Some(2));
        assert_eq!(i.current_timeline(), Some(1));
        // A promoted new primary that keeps archiving is followed.
        let i = inv(&[(1, 1), (1, 2), (1, 3), (2, 3), (2, 7)], &[(2, h)]);
        assert_eq!(i.current_timeline(), Some(2));
        // A history file archived after every segment: the new timeline just began.
        let mut i = inv(&[(1, 1), (1, 2)], &[(2, h)]);
        i.history_times.insert(2, at(9));
        assert_eq!(i.current_timeline(), Some(2));
        // No times at all: the highest timeline.
        let mut i = inv(&[(1, 1), (2, 3)], &[(2, h)]);
        for segs in i.segments.values_mut() {
            segs.values_mut().for_each(|t| *t = None);
        }
        assert_eq!(i.current_timeline(), Some(2));
    }

    #[test]
    fn switch_segment_comes_from_the_new_timeline() {
        // Timeline 2 branched from 1 inside segment 3 (at 0/3000100).
        let h = "1\t0/3000100\tno recovery target specified\n";
        let i = inv(&[(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)], &[(2, h)]);
        assert_eq!(i.latest_timeline(), Some(2));
        let path = i.path_to(2);
        assert_eq!(
            path,
            vec![
                Span {
                    tli: 1,
                    begin: Lsn(0)
                },
                Span {
                    tli: 2,
                    begin: Lsn(0x3000100)
                }
            ]
        );
        assert_eq!(i.timeline_for(&path, 2), 1);
        assert_eq!(i.timeline_for(&path, 3), 2);
        assert!(i.gaps(&path, 1, 4).is_empty());
        assert_eq!(i.continuous_end(&path, 1).unwrap().0, 4);
        assert_eq!(i.newest_on_path(&path), Some((2, 4)));
        // The old timeline alone still ends at segment 3.
        assert_eq!(i.continuous_end(&i.path_to(1), 1).unwrap().0, 3);
    }

    #[test]
    fn missing_switch_segment_on_new_timeline_is_a_gap() {
        let h = "1\t0/3000100\treason\n";
        let i = inv(&[(1, 1), (1, 2), (1, 3), (2, 4)], &[(2, h)]);
        let gaps = i.gaps(&i.path_to(2), 1, 4);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].first_missing, "000000020000000000000003");
    }

    #[test]
    fn three_timelines() {
        let h3 = "1\t0/3000100\ta\n2\t0/5000000\tb\n";
        let i = inv(
            &[(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (3, 6)],
            &[(3, h3)],
        );
        let path = i.path_to(3);
        assert_eq!(path.len(), 3);
        // The switch at exactly the start of segment 5 reads segment 5 from timeline 3.
        assert_eq!(i.timeline_for(&path, 4), 2);
        assert_eq!(i.timeline_for(&path, 5), 3);
        assert!(i.gaps(&path, 2, 6).is_empty());
    }

    #[test]
    fn first_segment_archived_after_a_time() {
        let i = inv(&[(1, 1), (1, 2), (1, 3), (1, 4)], &[]);
        let path = i.path_to(1);
        assert_eq!(i.first_archived_after(&path, 1, at(3).unwrap()), Some(3));
        assert_eq!(i.first_archived_after(&path, 1, at(9).unwrap()), None);
    }
}
