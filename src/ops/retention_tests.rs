//! Carrying a plan out against a real local repository: dry run = real run, and a crash
//! between a backup's manifest and its data never leaves a manifest pointing at deleted
//! data.

use std::sync::Arc;

use super::*;
use crate::codec::Algorithm;
use crate::config::RetentionRule;
use crate::manifest::{backup_id, BackupKind, ObjectEntry, PhysicalInfo};
use crate::pg::wal::{Lsn, Segment};
use crate::repo::faulty::{Faulty, Op, When};
use crate::repo::local::LocalRepository;
use crate::repo::{PutOptions, RepositoryExt};
use crate::test_fixtures::{manifest, physical_info};

const SEG: u64 = 16 << 20;

/// Three physical backups starting in segments 1, 3, 5 (one minute apart) and WAL 1..=6.
async fn fill(repo: &dyn Repository) -> Vec<String> {
    fill_seg(repo, SEG).await
}

/// [`fill`] with WAL segments of `seg` bytes (and no repo.json).
async fn fill_seg(repo: &dyn Repository, seg: u64) -> Vec<String> {
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut ids = vec![];
    for (i, start) in [1u64, 3, 5].into_iter().enumerate() {
        let t = base + chrono::Duration::minutes(i as i64);
        let id = backup_id(t, BackupKind::Physical);
        let mut objects = vec![];
        for name in ["base.0.tar", "base.1.tar"] {
            let body = format!("{id}/{name}").into_bytes();
            repo.put_bytes(
                &layout::backup_object_key(&id, name),
                body.clone(),
                PutOptions::default(),
            )
            .await
            .unwrap();
            objects.push(ObjectEntry {
                name: name.into(),
                sha256: String::new(),
                stored_size: body.len() as u64,
                size: body.len() as u64,
            });
        }
        let mut m = manifest(
            &id,
            BackupKind::Physical,
            t,
            t + chrono::Duration::seconds(10),
        );
        m.objects = objects;
        let wal = Segment {
            tli: 1,
            segno: start,
        }
        .name(seg);
        m.physical = Some(PhysicalInfo {
            start_lsn: Lsn(start * seg + 40),
            stop_lsn: Lsn(start * seg + 400),
            wal_segment_size: seg,
            start_wal: wal.clone(),
            stop_wal: wal,
            pgdata: "/x".into(),
            files: 2,
            ..physical_info(1, start, start)
        });
        m.store(repo).await.unwrap();
        ids.push(id);
    }
    for segno in 1..=6 {
        let name = Segment { tli: 1, segno }.name(seg);
        let key = layout::wal_key(&name, Algorithm::Zstd).unwrap();
        repo.put_bytes(&key, vec![0u8; 100], PutOptions::default())
            .await
            .unwrap();
    }
    ids
}

fn keep_last(n: u32) -> RetentionConfig {
    RetentionConfig {
        physical: RetentionRule {
            keep_last: Some(n),
            ..Default::default()
        },
        wal: "backups".into(),
        ..RetentionConfig::default()
    }
}

async fn keys(repo: &dyn Repository) -> Vec<String> {
    repo.list_keys("").await.unwrap()
}

#[tokio::test]
async fn dry_run_lists_exactly_what_the_real_run_deletes() {
    let d = tempfile::tempdir().unwrap();
    let repo = LocalRepository::new(d.path().to_path_buf());
    let ids = fill(&repo).await;
    let before = keys(&repo).await;
    let dry = execute(
        &repo,
        &keep_last(1),
        true,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap();
    assert_eq!(keys(&repo).await, before, "a dry run deletes nothing");
    assert!(dry.freed.is_none());
    assert_eq!(
        dry.plan.delete.backups,
        vec![ids[0].clone(), ids[1].clone()]
    );
    let real = execute(
        &repo,
        &keep_last(1),
        false,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap();
    assert_eq!(real.plan.delete.keys, dry.plan.delete.keys);
    let after = keys(&repo).await;
    let gone: Vec<String> = before
        .iter()
        .filter(|k| !after.contains(k))
        .cloned()
        .collect();
    assert_eq!(gone, dry.plan.delete.keys);
    let freed = real.freed.unwrap();
    assert_eq!(freed.objects, gone.len());
    // WAL 1..=4 went, 5 and 6 (the kept backup's) stayed.
    let wal: Vec<&String> = after.iter().filter(|k| k.starts_with("wal/")).collect();
    assert_eq!(wal.len(), 2, "{wal:?}");
    // A second run has nothing left to do.
    let again = execute(
        &repo,
        &keep_last(1),
        false,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap();
    assert!(again.plan.delete.keys.is_empty());
}

#[tokio::test]
async fn a_crash_mid_deletion_never_leaves_a_manifest_without_its_data() {
    let d = tempfile::tempdir().unwrap();
    // A crash after a backup's manifest was deleted and before its data was: the
    // second delete request (the first `delete_many`, after the manifest's `delete`)
    // and every later one fail, until healed.
    let repo = Arc::new(
        Faulty::new(Arc::new(LocalRepository::new(d.path().to_path_buf())))
            .fail(When::nth_of(Op::Delete, 2).onwards(), false),
    );
    let ids = fill(repo.as_ref()).await;
    let err = execute(
        repo.as_ref(),
        &keep_last(1),
        false,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains(&ids[0]), "{err:#}");

    // The first backup lost its manifest (no longer listed as complete) and kept its
    // data; every manifest still present has all its objects; no WAL was touched.
    let cat = Catalog::load(repo.as_ref()).await.unwrap();
    assert!(cat.find(&ids[0]).is_none());
    assert_eq!(cat.incomplete.len(), 1);
    assert_eq!(cat.incomplete[0].0, ids[0]);
    for m in &cat.complete {
        for o in &m.objects {
            let key = layout::backup_object_key(&m.id, &o.name);
            assert!(repo.head(&key).await.unwrap().is_some(), "{key} is gone");
        }
    }
    assert_eq!(repo.list("wal/").await.unwrap().len(), 6);

    // The next run (its leftovers now older than incomplete_after) finishes the job.
    assert_eq!(repo.injected(), 1);
    repo.heal();
    let later = Utc::now() + chrono::Duration::days(2);
    let r = execute(
        repo.as_ref(),
        &keep_last(1),
        false,
        later,
        &Elsewhere::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.plan.delete.incomplete, vec![ids[0].clone()]);
    assert_eq!(r.plan.delete.backups, vec![ids[1].clone()]);
    let left = keys(repo.as_ref()).await;
    assert!(
        left.iter()
            .all(|k| !k.contains(&ids[0]) && !k.contains(&ids[1])),
        "{left:?}"
    );
    assert_eq!(left.iter().filter(|k| k.starts_with("wal/")).count(), 2);
}

/// Without repo.json the manifests' segment size is used: with 64 MiB segments the floor
/// is the kept backup's own start segment (16 MiB would put it four times too high and
/// delete the WAL it needs); manifests that disagree are refused.
#[tokio::test]
async fn segment_size_comes_from_the_manifests_without_repo_json() {
    const SEG64: u64 = 64 << 20;
    let d = tempfile::tempdir().unwrap();
    let repo = LocalRepository::new(d.path().to_path_buf());
    let ids = fill_seg(&repo, SEG64).await;
    let r = execute(
        &repo,
        &keep_last(1),
        true,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap();
    let from = r.plan.wal.keep_from.as_ref().unwrap();
    assert_eq!(
        (from.segment.as_str(), from.backup.as_str()),
        (
            Segment { tli: 1, segno: 5 }.name(SEG64).as_str(),
            ids[2].as_str()
        )
    );
    assert_eq!(r.plan.delete.wal_files, 4, "{:?}", r.plan.wal);

    // One backup of another segment size: no way to tell which is right.
    let mut m = crate::manifest::Manifest::load(&repo, &ids[0])
        .await
        .unwrap()
        .unwrap();
    m.physical.as_mut().unwrap().wal_segment_size = SEG;
    m.store(&repo).await.unwrap();
    let err = execute(
        &repo,
        &keep_last(1),
        true,
        Utc::now(),
        &Elsewhere::default(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("different WAL segment sizes")
            && msg.contains(&format!("{}: 16 MiB", ids[0]))
            && msg.contains("64 MiB")
            && msg.contains("check --init"),
        "{msg}"
    );
}

/// A backup whose manifest is unreadable or altered is kept, with the reason, and holds
/// all WAL; the others are planned as usual.
#[tokio::test]
async fn unreadable_manifests_are_kept_and_hold_the_wal() {
    for damage in ["not json", "altered"] {
        let d = tempfile::tempdir().unwrap();
        let repo = LocalRepository::new(d.path().to_path_buf());
        let ids = fill(&repo).await;
        let key = layout::manifest_key(&ids[0]);
        let mut bytes = repo.get_bytes(&key).await.unwrap();
        match damage {
            "not json" => bytes[0] ^= 1,
            _ => {
                let text = String::from_utf8(bytes.clone()).unwrap();
                let at = text.find("\"stored_size\": ").unwrap() + 15;
                bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
            }
        }
        repo.put_bytes(&key, bytes, PutOptions::default())
            .await
            .unwrap();
        let before = keys(&repo).await;
        let r = execute(
            &repo,
            &keep_last(1),
            false,
            Utc::now(),
            &Elsewhere::default(),
        )
        .await
        .unwrap();
        let e = r
            .plan
            .backups
            .iter()
            .find(|b| b.decision.id == ids[0])
            .unwrap();
        assert_eq!(e.decision.action, crate::retention::policy::Action::Keep);
        assert!(
            e.decision.reasons[0].starts_with("manifest unreadable"),
            "{damage}: {:?}",
            e.decision.reasons
        );
        assert_eq!(r.plan.delete.backups, vec![ids[1].clone()], "{damage}");
        assert_eq!(r.plan.delete.wal_files, 0, "{damage}: {:?}", r.plan.wal);
        let after = keys(&repo).await;
        for k in before
            .iter()
            .filter(|k| k.contains(&ids[0]) || k.starts_with("wal/"))
        {
            assert!(after.contains(k), "{damage}: {k} was deleted");
        }
    }
}
