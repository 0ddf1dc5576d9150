//! Tests of the whole plan: WAL kept for kept backups on every timeline, history files,
//! `.partial`/`.backup` files, `retention.wal` durations, backups without a manifest,
//! deletion order, and the recoverable-window proof.

use super::*;
use crate::codec::Algorithm;
use crate::config::RetentionRule;
use crate::manifest::Outcome;
use crate::pg::wal::{parse_history, Segment};
use crate::retention::policy::tests::{logi, manifest_at, phys, B};
use std::collections::BTreeMap;
use std::time::Duration;

const SEG: u64 = 16 << 20;

fn t(min: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + chrono::Duration::minutes(min)
}

/// A WAL object archived at minute `min`.
fn wal_obj(name: &str, min: i64) -> ObjectMeta {
    ObjectMeta {
        key: layout::wal_key(name, Algorithm::Zstd).unwrap(),
        size: 1000,
        last_modified: Some(t(min)),
        metadata: Default::default(),
    }
}

fn seg(tli: u32, segno: u64) -> String {
    Segment { tli, segno }.name(SEG)
}

/// Segments `range` on `tli`, segment n archived at minute n.
fn segs(tli: u32, range: std::ops::RangeInclusive<u64>) -> Vec<ObjectMeta> {
    range.map(|n| wal_obj(&seg(tli, n), n as i64)).collect()
}

fn backup_objs(id: &str, min: i64, with_manifest: bool) -> Vec<ObjectMeta> {
    let mut names = vec!["base.0.tar.zst", "base.1.tar.zst"];
    if with_manifest {
        names.push("manifest.json");
    }
    names
        .into_iter()
        .map(|n| ObjectMeta {
            key: layout::backup_object_key(id, n),
            size: 500,
            last_modified: Some(t(min)),
            metadata: Default::default(),
        })
        .collect()
}

struct World {
    backups: Vec<Manifest>,
    incomplete: Vec<(String, Option<DateTime<Utc>>)>,
    backup_objects: Vec<ObjectMeta>,
    wal_objects: Vec<ObjectMeta>,
    inventory: WalInventory,
}

impl World {
    /// `backups`: (backup, timeline, start segment, stop segment).
    fn new(
        backups: &[(B, u32, u64, u64)],
        wal: Vec<ObjectMeta>,
        histories: &[(u32, &str)],
    ) -> World {
        let manifests: Vec<Manifest> = backups
            .iter()
            .map(|(b, tli, a, z)| manifest_at(b, *tli, *a, *z))
            .collect();
        let backup_objects = manifests
            .iter()
            .flat_map(|m| backup_objs(&m.id, 0, true))
            .collect();
        let mut wal_objects = wal;
        let mut h = BTreeMap::new();
        for (tli, text) in histories {
            h.insert(*tli, parse_history(text).unwrap());
            wal_objects.push(wal_obj(&format!("{tli:08X}.history"), 0));
        }
        let inventory = WalInventory::from_listing(&wal_objects, SEG, h);
        World {
            backups: manifests,
            incomplete: vec![],
            backup_objects,
            wal_objects,
            inventory,
        }
    }

    fn plan(&self, policy: &RetentionConfig, now: DateTime<Utc>) -> Plan {
        self.plan_leased(policy, now, &[])
    }

    fn plan_leased(
        &self,
        policy: &RetentionConfig,
        now: DateTime<Utc>,
        leased: &[(String, String)],
    ) -> Plan {
        self.plan_serving(policy, now, leased, &Elsewhere::default())
    }

    fn plan_serving(
        &self,
        policy: &RetentionConfig,
        now: DateTime<Utc>,
        leased: &[(String, String)],
        elsewhere: &Elsewhere,
    ) -> Plan {
        let inputs = Inputs {
            backups: &self.backups,
            incomplete: &self.incomplete,
            unreadable: &[],
            backup_objects: &self.backup_objects,
            wal_objects: &self.wal_objects,
            leased,
            inventory: &self.inventory,
            elsewhere,
        };
        let p = plan(&inputs, policy, now).unwrap();
        check_invariants(self, &p);
        p
    }
}

/// What must hold for every plan.
fn check_invariants(w: &World, p: &Plan) {
    // No kept backup loses its parent.
    for e in p
        .backups
        .iter()
        .filter(|e| e.decision.action == Action::Keep)
    {
        if let Some(parent) = w
            .backups
            .iter()
            .find(|m| m.id == e.decision.id)
            .and_then(|m| m.parent())
        {
            assert!(
                !p.delete.backups.iter().any(|d| d == parent),
                "{parent} deleted under kept {}",
                e.decision.id
            );
        }
    }
    // History files never go.
    assert!(
        !p.delete.keys.iter().any(|k| k.ends_with(".history")),
        "{:?}",
        p.delete.keys
    );
    // Keys are sorted, unique, and exactly what the steps delete.
    let mut from_steps: Vec<String> = p
        .steps
        .iter()
        .flat_map(|s| match s {
            Step::Backup { manifest, data, .. } => manifest
                .iter()
                .cloned()
                .chain(data.iter().cloned())
                .collect::<Vec<_>>(),
            Step::Incomplete { keys, .. } | Step::Wal { keys } => keys.clone(),
        })
        .collect();
    from_steps.sort();
    assert_eq!(from_steps, p.delete.keys);
    assert!(p.delete.keys.windows(2).all(|k| k[0] < k[1]));
    // Backups go before WAL.
    let first_wal = p.steps.iter().position(|s| matches!(s, Step::Wal { .. }));
    let last_backup = p
        .steps
        .iter()
        .rposition(|s| matches!(s, Step::Backup { .. }));
    if let (Some(a), Some(b)) = (first_wal, last_backup) {
        assert!(b < a, "backups must be deleted before WAL");
    }
    // No WAL at or after a kept physical backup's start segment goes, on any timeline.
    for e in p
        .backups
        .iter()
        .filter(|e| e.decision.action == Action::Keep)
    {
        let m = w.backups.iter().find(|m| m.id == e.decision.id).unwrap();
        if let Some(ph) = &m.physical {
            let start = ph.start_lsn.0 / SEG;
            for k in &p.steps {
                if let Step::Wal { keys } = k {
                    for key in keys {
                        let (name, _) = layout::parse_wal_key(key).unwrap();
                        let s = Segment::parse(&name[..24], SEG).unwrap();
                        assert!(s.segno < start, "{key} is needed by kept backup {}", m.id);
                    }
                }
            }
        }
    }
    // Bytes and counts add up.
    let all: Vec<&ObjectMeta> = w.backup_objects.iter().chain(&w.wal_objects).collect();
    let bytes: u64 = p
        .delete
        .keys
        .iter()
        .map(|k| all.iter().find(|o| &o.key == k).unwrap().size)
        .sum();
    assert_eq!(
        (p.delete.objects, p.delete.bytes),
        (p.delete.keys.len(), bytes)
    );
}

fn keep_last(n: u32, wal: &str) -> RetentionConfig {
    RetentionConfig {
        physical: RetentionRule {
            keep_last: Some(n),
            ..Default::default()
        },
        wal: wal.into(),
        ..RetentionConfig::default()
    }
}

fn wal_deleted(p: &Plan) -> Vec<String> {
    p.delete
        .keys
        .iter()
        .filter(|k| k.starts_with("wal/"))
        .map(|k| layout::parse_wal_key(k).unwrap().0)
        .collect()
}

/// b1 (segment 1), b2 (4..5), b3 (7) on timeline 1, with segments 1..9 archived.
fn three_backups_on_one_timeline() -> World {
    World::new(
        &[
            (phys("b1", "2026-11-22T10:01:00Z"), 1, 1, 1),
            (phys("b2", "2026-11-22T10:04:00Z"), 1, 4, 5),
            (phys("b3", "2026-11-22T10:07:00Z"), 1, 7, 7),
        ],
        segs(1, 1..=9),
        &[],
    )
}

/// Regression: retention deleted a backup, and the WAL after it, while a restore of it
/// was running (or its restored server had not finished recovery).
#[test]
fn a_leased_backup_and_its_wal_are_kept() {
    let w = three_backups_on_one_timeline();
    let b1 = w.backups[0].id.clone();
    let leased = vec![(b1.clone(), "leased by a restore (db1 pid 7)".to_string())];
    let p = w.plan_leased(&keep_last(2, "backups"), t(60), &leased);
    assert!(p.delete.backups.is_empty(), "{:?}", p.delete.backups);
    assert!(wal_deleted(&p).is_empty());
    let d = p.backups.iter().find(|b| b.decision.id == b1).unwrap();
    assert_eq!(d.decision.action, Action::Keep);
    assert!(d
        .decision
        .reasons
        .iter()
        .any(|r| r.contains("leased by a restore")));
    // Without the lease it goes, with the WAL before b2.
    let p = w.plan(&keep_last(2, "backups"), t(60));
    assert_eq!(p.delete.backups, vec![b1]);
}

/// A kept incremental backup keeps its whole chain: keep_last = 1 keeps the newest
/// backup, and with it its parent and its parent's full backup; an older full backup
/// outside the chain goes.
#[test]
fn a_kept_incremental_backup_keeps_its_chain() {
    let mut w = World::new(
        &[
            (phys("old", "2026-11-22T10:00:00Z"), 1, 1, 1),
            (phys("full", "2026-11-22T10:02:00Z"), 1, 2, 2),
            (phys("inc1", "2026-11-22T10:04:00Z"), 1, 4, 4),
            (phys("inc2", "2026-11-22T10:06:00Z"), 1, 6, 6),
        ],
        segs(1, 1..=7),
        &[],
    );
    let link = |w: &mut World, child: usize, parent: usize| {
        let since = w.backups[parent].physical.as_ref().unwrap().start_lsn;
        let parent_id = w.backups[parent].id.clone();
        let length = w.backups[parent]
            .incremental()
            .map_or(0, |i| i.chain_length)
            + 1;
        w.backups[child].physical.as_mut().unwrap().incremental =
            Some(crate::manifest::IncrementalInfo {
                parent: parent_id,
                since_lsn: since,
                chain_length: length,
                method: "page-lsn".into(),
                delta_files: 1,
                unchanged_files: 1,
            });
    };
    link(&mut w, 2, 1);
    link(&mut w, 3, 2);
    let p = w.plan(&keep_last(1, "backups"), t(60));
    assert_eq!(p.delete.backups, vec![w.backups[0].id.clone()]);
    for (i, child) in [(1, "inc1"), (2, "inc2")] {
        let d = p
            .backups
            .iter()
            .find(|b| b.decision.id == w.backups[i].id)
            .unwrap();
        assert_eq!(d.decision.action, Action::Keep);
        assert!(
            d.decision
                .reasons
                .iter()
                .any(|r| r.contains("parent of kept incremental backup") && r.contains(child)),
            "{:?}",
            d.decision.reasons
        );
    }
    // The WAL the full backup needs stays too.
    assert!(wal_deleted(&p).iter().all(|k| !k.contains(&seg(1, 2))));
}

/// Regression (several repositories): a repository that receives WAL deleted the WAL
/// before its own oldest kept backup, which older backups kept in another repository
/// (reading WAL from it) still needed; and one that receives only WAL kept every
/// segment forever.
#[test]
fn wal_serves_the_backups_other_repositories_keep() {
    let w = three_backups_on_one_timeline();
    let older_elsewhere = manifest_at(&phys("x0", "2026-11-22T10:02:00Z"), 1, 2, 2);
    let elsewhere = Elsewhere {
        backups: vec![older_elsewhere],
        ..Default::default()
    };
    let p = w.plan_serving(&keep_last(2, "backups"), t(60), &[], &elsewhere);
    assert_eq!(p.delete.backups, vec!["b1"]);
    assert_eq!(wal_deleted(&p), vec![seg(1, 1)]);
    assert_eq!(p.wal.keep_from.as_ref().unwrap().backup, "x0");

    // Only WAL here: what the other repository's backups need is kept, no more.
    let wal_only = World::new(&[], segs(1, 1..=9), &[]);
    let p = wal_only.plan(&keep_last(2, "backups"), t(60));
    assert!(
        wal_deleted(&p).is_empty(),
        "no backup anywhere: all WAL is kept"
    );
    let p = wal_only.plan_serving(&keep_last(2, "backups"), t(60), &[], &elsewhere);
    assert_eq!(wal_deleted(&p), vec![seg(1, 1)]);

    // The other repository could not be read, or holds an unreadable manifest: what
    // its backups need is unknown, and nothing goes.
    let blind = Elsewhere {
        unknown: Some("repository offsite could not be read".into()),
        ..Default::default()
    };
    let p = w.plan_serving(&keep_last(2, "backups"), t(60), &[], &blind);
    assert!(wal_deleted(&p).is_empty());
    assert!(p
        .wal
        .ranges
        .iter()
        .any(|r| r.reason.contains("offsite could not be read")));
    let unreadable = Elsewhere {
        unreadable: vec!["x9 (in repository offsite)".into()],
        ..Default::default()
    };
    let p = w.plan_serving(&keep_last(2, "backups"), t(60), &[], &unreadable);
    assert!(wal_deleted(&p).is_empty());
}

#[test]
fn wal_before_the_oldest_kept_start_goes_and_nothing_after() {
    let w = three_backups_on_one_timeline();
    let p = w.plan(&keep_last(2, "backups"), t(60));
    assert_eq!(p.delete.backups, vec!["b1"]);
    assert_eq!(wal_deleted(&p), vec![seg(1, 1), seg(1, 2), seg(1, 3)]);
    let k = p.wal.keep_from.as_ref().unwrap();
    assert_eq!(
        (k.segment.as_str(), k.backup.as_str()),
        (seg(1, 4).as_str(), "b2")
    );
    assert_eq!(p.wal.ranges.len(), 2);
    assert_eq!(
        (
            p.wal.ranges[0].action,
            p.wal.ranges[0].files,
            p.wal.ranges[0].first.as_str()
        ),
        (Action::Delete, 3, seg(1, 1).as_str())
    );
    assert_eq!(
        (p.wal.ranges[1].action, p.wal.ranges[1].last.clone()),
        (Action::Keep, seg(1, 9))
    );
    // The window still starts at b2.
    assert_eq!(p.recoverable_windows.len(), 1);
    assert_eq!(p.recoverable_windows[0].from_backup, "b2");
    // The manifest is deleted before the data.
    let Step::Backup { id, manifest, data } = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(id, "b1");
    assert_eq!(manifest.as_deref(), Some("backups/b1/manifest.json"));
    assert_eq!(data.len(), 2);
}

#[test]
fn every_timeline_keeps_what_a_kept_backup_may_need() {
    // Timeline 2 branched from 1 inside segment 6; timeline 1 went on to segment 12
    // (an abandoned branch), timeline 2 to 9. Backup c was taken on timeline 2.
    let h2 = "1\t0/6000100\tbranch\n";
    let mut wal = segs(1, 1..=12);
    // Timeline 2 is the one archived last: production is on it.
    wal.extend((6..=9).map(|n| wal_obj(&seg(2, n), 20 + n as i64)));
    let world = || {
        World::new(
            &[
                (phys("a", "2026-11-22T10:02:00Z"), 1, 2, 2),
                (phys("b", "2026-11-22T10:04:00Z"), 1, 4, 4),
                (phys("c", "2026-11-22T10:08:00Z"), 2, 7, 8),
            ],
            wal.clone(),
            &[(2, h2)],
        )
    };
    // Only c kept: everything below 7 goes on both timelines (including timeline 2's
    // switch segment 6, which c starts after); timeline 1's 7..12 stay (conservative).
    let p = world().plan(&keep_last(1, "backups"), t(60));
    assert_eq!(p.delete.backups, vec!["a", "b"]);
    let mut want: Vec<String> = (1..=6).map(|n| seg(1, n)).collect();
    want.push(seg(2, 6));
    want.sort();
    let mut got = wal_deleted(&p);
    got.sort();
    assert_eq!(got, want);
    // Backup b (timeline 1, before the branch) kept too: it may recover along timeline 1
    // or along timeline 2, so both keep everything from its start segment 4.
    let p = world().plan(&keep_last(2, "backups"), t(60));
    assert_eq!(p.delete.backups, vec!["a"]);
    let mut got = wal_deleted(&p);
    got.sort();
    assert_eq!(got, vec![seg(1, 1), seg(1, 2), seg(1, 3)]);
    // Windows of the kept backups on both timelines are as before (checked by plan()).
    assert_eq!(p.recoverable_windows[0].timeline, 2);
    assert_eq!(p.recoverable_windows[0].from_backup, "b");
    assert!(p
        .wal
        .ranges
        .iter()
        .any(|r| r.first == "00000002.history" && r.action == Action::Keep));
}

#[test]
fn history_partial_and_backup_files() {
    let mut wal = segs(1, 1..=6);
    wal.push(wal_obj("000000010000000000000002.00000028.backup", 2));
    wal.push(wal_obj("000000010000000000000005.00000028.backup", 5));
    wal.push(wal_obj("000000010000000000000003.partial", 3));
    wal.push(wal_obj("000000010000000000000005.partial", 5));
    wal.push(ObjectMeta {
        key: "wal/0000000100000000/stray-file".into(),
        size: 1,
        last_modified: Some(t(0)),
        metadata: Default::default(),
    });
    let w = World::new(
        &[
            (phys("old", "2026-11-22T10:02:00Z"), 1, 2, 2),
            (phys("new", "2026-11-22T10:05:00Z"), 1, 5, 5),
        ],
        wal,
        &[
            (2, "1\t0/9000000\tfuture branch\n"),
            (3, "1\t0/9000000\ta\n2\t0/A000000\tb\n"),
        ],
    );
    let p = w.plan(&keep_last(1, "backups"), t(60));
    let mut got = wal_deleted(&p);
    got.sort();
    assert_eq!(
        got,
        vec![
            seg(1, 1),
            seg(1, 2),
            "000000010000000000000002.00000028.backup".to_string(),
            seg(1, 3),
            "000000010000000000000003.partial".to_string(),
            seg(1, 4),
        ]
    );
    let kept_names: Vec<&str> = p
        .wal
        .ranges
        .iter()
        .filter(|r| r.action == Action::Keep)
        .map(|r| r.first.as_str())
        .collect();
    assert!(kept_names.contains(&"00000002.history") && kept_names.contains(&"00000003.history"));
    assert!(p
        .wal
        .ranges
        .iter()
        .any(|r| r.first.ends_with("stray-file") && r.action == Action::Keep));
}

#[test]
fn wal_duration_keeps_recent_wal_but_never_less_than_backups_need() {
    let w = World::new(
        &[
            (phys("b1", "2026-11-22T10:01:00Z"), 1, 1, 1),
            (phys("b2", "2026-11-22T10:06:00Z"), 1, 6, 6),
        ],
        segs(1, 1..=8),
        &[],
    );
    // Now = minute 10; wal = 7m keeps segments archived at minute 3 and later. Exactly 7
    // minutes old (segment 3) is "within".
    let mut policy = keep_last(1, "7m");
    let p = w.plan(&policy, t(10));
    assert_eq!(wal_deleted(&p), vec![seg(1, 1), seg(1, 2)]);
    assert!(p
        .wal
        .ranges
        .iter()
        .any(|r| r.reason.contains("archived within retention.wal") && r.first == seg(1, 3)));
    // Far in the future the duration keeps nothing, but the kept backup's WAL stays.
    let p = w.plan(&policy, t(100_000));
    assert_eq!(
        wal_deleted(&p),
        (1..=5).map(|n| seg(1, n)).collect::<Vec<_>>()
    );
    policy.wal = "backups".into();
    assert_eq!(wal_deleted(&w.plan(&policy, t(10))).len(), 5);
}

#[test]
fn no_physical_backup_keeps_all_wal() {
    let w = World::new(
        &[(logi("l1", "2026-11-22T10:00:00Z"), 1, 0, 0)],
        segs(1, 1..=4),
        &[],
    );
    let p = w.plan(&keep_last(1, "backups"), t(100_000));
    assert!(p.delete.keys.is_empty(), "{:?}", p.delete.keys);
    assert!(p.wal.keep_from.is_none());
    assert!(p.wal.ranges[0]
        .reason
        .contains("no complete physical backup"));
}

#[test]
fn logical_backups_do_not_hold_wal() {
    let w = World::new(
        &[
            (
                logi("l-old", "2026-11-22T10:00:00Z").verified(Outcome::Ok),
                1,
                0,
                0,
            ),
            (phys("p", "2026-11-22T10:05:00Z"), 1, 5, 5),
        ],
        segs(1, 1..=6),
        &[],
    );
    let p = w.plan(&keep_last(1, "backups"), t(60));
    assert!(p.delete.backups.is_empty(), "the only logical backup stays");
    assert_eq!(wal_deleted(&p).len(), 4);
}

#[test]
fn incomplete_backups_go_only_after_incomplete_after() {
    let mut w = World::new(
        &[(phys("p", "2026-11-22T10:05:00Z"), 1, 5, 5)],
        segs(1, 5..=6),
        &[],
    );
    // incomplete_after defaults to 1 day. "edge" is exactly 1 day old: kept.
    let day = 24 * 60;
    for (id, min) in [("gone", -day - 1), ("edge", -day), ("fresh", -5)] {
        w.backup_objects.extend(backup_objs(id, min, false));
        w.incomplete.push((id.to_string(), Some(t(min))));
    }
    w.backup_objects.push(ObjectMeta {
        key: "backups/untimed/x".into(),
        size: 1,
        last_modified: None,
        metadata: Default::default(),
    });
    w.incomplete.push(("untimed".to_string(), None));
    let p = w.plan(&RetentionConfig::default(), t(0));
    assert_eq!(p.delete.incomplete, vec!["gone"]);
    assert_eq!(
        p.delete.keys,
        vec!["backups/gone/base.0.tar.zst", "backups/gone/base.1.tar.zst"]
    );
    let by = |id: &str| p.incomplete.iter().find(|i| i.id == id).unwrap();
    assert_eq!(by("edge").action, Action::Keep);
    assert!(by("fresh").reason.contains("may still be running"));
    assert_eq!(by("untimed").action, Action::Keep);
}

#[test]
fn a_backup_marked_for_deletion_goes_at_once() {
    let mut w = World::new(
        &[(phys("p", "2026-11-22T10:05:00Z"), 1, 5, 5)],
        segs(1, 5..=6),
        &[],
    );
    // A retention run deleted its manifest and was killed: however young, it goes.
    w.backup_objects.extend(backup_objs("half", -5, false));
    w.backup_objects.push(ObjectMeta {
        key: "backups/half/deleting".into(),
        size: 10,
        last_modified: Some(t(-5)),
        metadata: Default::default(),
    });
    w.incomplete.push(("half".to_string(), Some(t(-5))));
    let p = w.plan(&RetentionConfig::default(), t(0));
    assert_eq!(p.delete.incomplete, vec!["half"]);
    assert_eq!(p.delete.keys.len(), 3);
    assert!(p.incomplete[0].reason.contains("did not finish"));
}

#[test]
fn the_window_proof_refuses_a_plan_that_loses_a_restore() {
    let w = World::new(
        &[(phys("b", "2026-11-22T10:03:00Z"), 1, 3, 4)],
        segs(1, 1..=8),
        &[],
    );
    let kept: Vec<Manifest> = w.backups.clone();
    let ok: Vec<ObjectMeta> = segs(1, 3..=8);
    let after_ok = WalInventory::from_listing(&ok, SEG, BTreeMap::new());
    assert!(prove_windows_unchanged(&kept, &w.inventory, &after_ok).is_ok());
    // Losing segment 6 (after the backup's start) would cut the window: refused.
    let mut lossy = ok.clone();
    lossy.retain(|o| !o.key.contains(&seg(1, 6)));
    let after_bad = WalInventory::from_listing(&lossy, SEG, BTreeMap::new());
    let err = prove_windows_unchanged(&kept, &w.inventory, &after_bad).unwrap_err();
    assert!(
        err.contains("timeline 1") && err.contains("nothing was deleted"),
        "{err}"
    );
}

#[test]
fn backups_are_planned_oldest_first_by_manifest_time() {
    // Ids sort opposite to time.
    let w = World::new(
        &[
            (phys("z1", "2026-11-22T10:01:00Z"), 1, 1, 1),
            (phys("y2", "2026-11-22T10:02:00Z"), 1, 2, 2),
            (phys("x3", "2026-11-22T10:03:00Z"), 1, 3, 3),
        ],
        segs(1, 1..=4),
        &[],
    );
    let p = w.plan(&keep_last(1, "backups"), t(60));
    let order: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Backup { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["z1", "y2"]);
    let _ = Duration::ZERO;
}

/// Scale: 2000 daily backups (10 objects each) and 200,049 WAL segments, tiered policy.
/// Ignored in the normal run (about 7 s unoptimised); measure with
/// `cargo test --release --lib retention::plan::tests::scale -- --ignored --nocapture`.
#[test]
#[ignore]
fn scale_2000_backups_200k_wal_segments() {
    let base = DateTime::parse_from_rfc3339("2021-01-01T03:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let (n_backups, per_day) = (2000u64, 100u64);
    let mut manifests = vec![];
    let mut objects = vec![];
    for i in 0..n_backups {
        let mut m = manifest_at(
            &phys("x", "2021-01-01T03:00:00Z"),
            1,
            i * per_day + 1,
            i * per_day + 2,
        );
        m.id = format!("b{i:05}");
        m.start_time = base + chrono::Duration::days(i as i64);
        m.stop_time = m.start_time + chrono::Duration::minutes(30);
        objects.extend((0..10).map(|k| ObjectMeta {
            key: layout::backup_object_key(&m.id, &format!("base.{k}.tar.zst")),
            size: 1 << 20,
            last_modified: Some(m.stop_time),
            metadata: Default::default(),
        }));
        manifests.push(m);
    }
    let wal: Vec<ObjectMeta> = (1..n_backups * per_day + 50)
        .map(|n| wal_obj(&seg(1, n), 0))
        .collect();
    let inventory = WalInventory::from_listing(&wal, SEG, BTreeMap::new());
    let inputs = Inputs {
        backups: &manifests,
        incomplete: &[],
        unreadable: &[],
        backup_objects: &objects,
        wal_objects: &wal,
        leased: &[],
        inventory: &inventory,
        elsewhere: &Elsewhere::default(),
    };
    let policy = RetentionConfig {
        physical: RetentionRule {
            keep_daily: Some(14),
            keep_weekly: Some(8),
            keep_monthly: Some(12),
            ..Default::default()
        },
        wal: "backups".into(),
        ..RetentionConfig::default()
    };
    let now = base + chrono::Duration::days(n_backups as i64);
    let started = std::time::Instant::now();
    let p = plan(&inputs, &policy, now).unwrap();
    let took = started.elapsed();
    let kept: Vec<&str> = p
        .backups
        .iter()
        .filter(|b| b.decision.action == Action::Keep)
        .map(|b| b.decision.id.as_str())
        .collect();
    assert!((14..=34).contains(&kept.len()), "{kept:?}");
    assert!(kept.contains(&"b01999") && kept.contains(&"b01986"));
    // Everything below the oldest kept backup's start goes, nothing else.
    let oldest: u64 = kept[0][1..].parse().unwrap();
    let floor = oldest * per_day + 1;
    assert_eq!(p.delete.wal_files as u64, floor - 1);
    assert_eq!(p.delete.backups.len(), n_backups as usize - kept.len());
    eprintln!(
        "scale: {} backups, {} WAL files: kept {} backups, {} keys to delete; planned in {took:?}",
        manifests.len(),
        wal.len(),
        kept.len(),
        p.delete.keys.len()
    );
}
