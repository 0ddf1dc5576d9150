//! `verify --wal`, the content part: every archived WAL object is read and checked —
//! its stored checksum, its decompression, and what it holds (a segment's page headers,
//! see [`crate::pg::walpage`]; a history or backup-history file's text) — so a damaged
//! object fails verification instead of the restore that needs it.
//!
//! Incremental: objects found intact are recorded in the repository
//! ([`crate::repo::walcheck`]) and read again only when they change. Objects are streamed
//! (one page of a segment in memory, a few objects at a time).

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::codec::Algorithm;
use crate::pg::wal::{self, parse_history, Segment, WalFileKind};
use crate::pg::walpage::{self, Expect};
use crate::repo::identity::RepoIdentity;
use crate::repo::walcheck::WalChecked;
use crate::repo::{layout, ObjectMeta, Repository};
use crate::transfer;

/// Objects read at once.
const CONCURRENCY: usize = 4;
/// History and backup-history files are a few lines; more is not one.
const TEXT_LIMIT: u64 = 1 << 20;

/// What reading the archived WAL found.
#[derive(Debug, Default, Serialize)]
pub struct WalContent {
    /// WAL objects in the repository.
    pub objects: usize,
    /// Read and checked in this run.
    pub checked: usize,
    /// Found intact by an earlier run and unchanged since: not read.
    pub skipped_unchanged: usize,
    /// Stored bytes read.
    pub bytes_read: u64,
    pub failures: Vec<WalFailure>,
    /// The last time every archived WAL object was found intact (this run, if it did).
    pub whole_range_verified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct WalFailure {
    /// The WAL file name (`000000010000000000000003`).
    pub file: String,
    pub key: String,
    pub error: String,
}

impl std::fmt::Display for WalFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WAL {} ({}): {}", self.file, self.key, self.error)
    }
}

/// Read every WAL object in `objects` (a listing of `wal/`) not found intact before,
/// record what is intact, and report.
pub async fn check(
    repo: &Arc<dyn Repository>,
    identity: Option<&RepoIdentity>,
    seg_size: u64,
    objects: &[ObjectMeta],
) -> anyhow::Result<WalContent> {
    let mut state = WalChecked::load(repo.as_ref()).await?;
    let magic = identity.and_then(|i| walpage::magic_of_major(i.pg_major));
    let sysid = identity.and_then(|i| i.system_identifier.parse::<u64>().ok());
    let wal: Vec<(&ObjectMeta, String, Algorithm)> = objects
        .iter()
        .filter_map(|o| layout::parse_wal_key(&o.key).map(|(name, alg)| (o, name, alg)))
        .collect();
    let mut report = WalContent {
        objects: wal.len(),
        ..Default::default()
    };
    let mut to_read = std::collections::VecDeque::new();
    for (o, name, alg) in wal {
        if state.unchanged(o) {
            report.skipped_unchanged += 1;
        } else {
            to_read.push_back((o.clone(), name, alg));
        }
    }
    let now = Utc::now();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < CONCURRENCY {
            let Some((o, name, algorithm)) = to_read.pop_front() else {
                break;
            };
            let repo = repo.clone();
            let how = How {
                name,
                algorithm,
                seg_size,
                magic,
                sysid,
            };
            running.spawn(async move {
                let r = check_object(&repo, &o.key, &how).await;
                (o, how.name, r)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (o, name, r) = done.context("WAL check task failed")?;
        report.checked += 1;
        report.bytes_read += o.size;
        match r {
            Ok(()) => state.record(&o, now),
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(wal = %name, key = %o.key, error = %error, "archived WAL is damaged");
                state.objects.remove(&o.key);
                report.failures.push(WalFailure {
                    file: name,
                    key: o.key.clone(),
                    error,
                });
            }
        }
    }
    report.failures.sort_by(|a, b| a.key.cmp(&b.key));
    // Forget objects that are gone (retention deleted them).
    let present: std::collections::BTreeSet<&str> =
        objects.iter().map(|o| o.key.as_str()).collect();
    state.objects.retain(|k, _| present.contains(k.as_str()));
    if report.failures.is_empty() {
        state.complete_at = Some(now);
    }
    report.whole_range_verified_at = state.complete_at;
    state.store(repo.as_ref()).await?;
    Ok(report)
}

/// How to check one object.
struct How {
    name: String,
    algorithm: Algorithm,
    seg_size: u64,
    magic: Option<u16>,
    sysid: Option<u64>,
}

async fn check_object(repo: &Arc<dyn Repository>, key: &str, how: &How) -> anyhow::Result<()> {
    let obj = repo.get(key).await.context("open the object")?;
    let expected = layout::stored_digest(&obj.meta.metadata);
    let kind = wal::classify(&how.name).context("not a WAL file name")?;
    let how = How {
        name: how.name.clone(),
        ..*how
    };
    transfer::read_object(obj, key, how.algorithm, expected, move |r| {
        check_content(r, kind, &how)
    })
    .await
}

fn check_content(r: &mut dyn Read, kind: WalFileKind, how: &How) -> anyhow::Result<()> {
    match kind {
        WalFileKind::Segment | WalFileKind::Partial => {
            let seg = Segment::parse(&how.name[..24], how.seg_size)
                .context("the name is no segment of the repository's segment size")?;
            let expect = Expect {
                tli: seg.tli,
                start: seg.start_lsn(how.seg_size).0,
                seg_size: how.seg_size,
                magic: how.magic,
                system_identifier: how.sysid,
                partial: kind == WalFileKind::Partial,
            };
            walpage::check_segment(r, &expect).map_err(anyhow::Error::msg)?;
        }
        WalFileKind::TimelineHistory => {
            let text = read_text(r)?;
            let tli = wal::history_timeline(&how.name).context("not a history file name")?;
            let entries = parse_history(&text).map_err(anyhow::Error::msg)?;
            if let Some(e) = entries.iter().find(|e| e.parent >= tli) {
                anyhow::bail!("names timeline {} as a parent of timeline {tli}", e.parent);
            }
        }
        WalFileKind::BackupHistory => {
            let text = read_text(r)?;
            let want = format!("(file {})", &how.name[..24]);
            let start = text
                .lines()
                .find(|l| l.starts_with("START WAL LOCATION:"))
                .context("no START WAL LOCATION line: not a backup history file")?;
            if !start.contains(&want) {
                anyhow::bail!("{start:?} is not for segment {}", &how.name[..24]);
            }
        }
    }
    Ok(())
}

fn read_text(r: &mut dyn Read) -> anyhow::Result<String> {
    let mut bytes = vec![];
    r.take(TEXT_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > TEXT_LIMIT {
        anyhow::bail!("larger than {TEXT_LIMIT} bytes: not a history file");
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn how(name: &str) -> How {
        How {
            name: name.into(),
            algorithm: Algorithm::None,
            seg_size: 16 << 20,
            magic: None,
            sysid: None,
        }
    }

    fn check_text(name: &str, text: &str) -> anyhow::Result<()> {
        let kind = wal::classify(name).unwrap();
        check_content(&mut text.as_bytes(), kind, &how(name))
    }

    #[test]
    fn history_files_are_parsed() {
        assert!(check_text(
            "00000003.history",
            "1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026-11-22\n"
        )
        .is_ok());
        let e = check_text("00000002.history", "2\t0/3000000\tx\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("timeline 2 as a parent of timeline 2"),
            "{e}"
        );
        assert!(check_text("00000002.history", "1\tgarbage\n").is_err());
        let e = check_text("00000002.history", "1\t0/3000000\t\u{0}\u{ff}").map(|_| ());
        assert!(e.is_ok(), "any UTF-8 reason");
        let bad_utf8 = [b'1', b'\t', b'0', b'/', b'1', b'\t', 0xff];
        let kind = wal::classify("00000002.history").unwrap();
        assert!(check_content(&mut &bad_utf8[..], kind, &how("00000002.history")).is_err());
    }

    #[test]
    fn backup_history_files_name_their_segment() {
        let name = "000000010000000000000002.00000028.backup";
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n";
        assert!(check_text(name, text).is_ok());
        let other = text.replace(
            "(file 000000010000000000000002)\nSTOP",
            "(file 000000010000000000000003)\nSTOP",
        );
        assert!(check_text(name, &other).is_err());
        assert!(check_text(name, "hello").is_err());
    }
}
