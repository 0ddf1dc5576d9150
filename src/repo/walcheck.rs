//! `verify/wal.json`: the archived WAL objects `verify --wal` has read and found intact,
//! so that the next run reads only what is new or changed.
//!
//! It lives in the repository, beside what it describes, not in `state_dir`: the facts
//! are about the repository's objects, not about a host, so every host verifying the
//! repository (or a new host after a rebuild) shares them, and `info` and `/metrics`
//! read them with the access they already have. An object is known by its key, its
//! stored size and its modification time as the listing gives them (no request per
//! object): a rewritten object (a new upload, or bytes changed in place on a local
//! repository) has a new modification time and is read again. Objects that failed are
//! not recorded, so they fail again at every run until repaired. The file is a cache:
//! an unreadable or deleted one only means the next run reads everything.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{layout, ObjectMeta, PutOptions, RepoError, Repository, RepositoryExt};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WalChecked {
    pub format: u32,
    /// When one run last found every archived WAL object intact (read then, or read
    /// before and unchanged since): the last time the whole WAL range was checked.
    pub complete_at: Option<DateTime<Utc>>,
    /// Key → the object as it was when it was read and found intact.
    pub objects: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub size: u64,
    pub modified: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
}

impl WalChecked {
    /// The recorded state; empty when there is none or it cannot be used (then
    /// everything is read again, which is slow but right).
    pub async fn load(repo: &dyn Repository) -> anyhow::Result<WalChecked> {
        match repo.get_bytes(layout::WAL_CHECKED).await {
            Ok(bytes) => match serde_json::from_slice::<WalChecked>(&bytes) {
                Ok(s) if s.format <= FORMAT => Ok(s),
                Ok(s) => {
                    tracing::warn!(
                        format = s.format,
                        "{} has a newer format; reading every WAL object",
                        layout::WAL_CHECKED
                    );
                    Ok(WalChecked::default())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{} is not valid; reading every WAL object", layout::WAL_CHECKED);
                    Ok(WalChecked::default())
                }
            },
            Err(RepoError::NotFound { .. }) => Ok(WalChecked::default()),
            Err(e) => Err(anyhow::Error::new(e).context("read what earlier WAL checks found")),
        }
    }

    pub async fn store(&self, repo: &dyn Repository) -> anyhow::Result<()> {
        let mut me = self.clone();
        me.format = FORMAT;
        let body = serde_json::to_vec(&me)?;
        repo.put_bytes(layout::WAL_CHECKED, body, PutOptions::default())
            .await
            .map_err(|e| anyhow::Error::new(e).context("record what the WAL check found"))?;
        Ok(())
    }

    /// Whether `o` was read and found intact as it is now. An object without a
    /// modification time is always read.
    pub fn unchanged(&self, o: &ObjectMeta) -> bool {
        match (self.objects.get(&o.key), o.last_modified) {
            (Some(seen), Some(modified)) => seen.size == o.size && seen.modified == modified,
            _ => false,
        }
    }

    /// Record `o` as read and found intact at `now`.
    pub fn record(&mut self, o: &ObjectMeta, now: DateTime<Utc>) {
        if let Some(modified) = o.last_modified {
            self.objects.insert(
                o.key.clone(),
                Seen {
                    size: o.size,
                    modified,
                    checked_at: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn obj(key: &str, size: u64, secs: i64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            last_modified: Some(Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn a_changed_size_or_time_is_read_again() {
        let mut s = WalChecked::default();
        let now = Utc::now();
        s.record(&obj("wal/a", 10, 0), now);
        assert!(s.unchanged(&obj("wal/a", 10, 0)));
        assert!(!s.unchanged(&obj("wal/a", 11, 0)));
        assert!(!s.unchanged(&obj("wal/a", 10, 1)));
        assert!(!s.unchanged(&obj("wal/b", 10, 0)));
        let mut no_time = obj("wal/c", 10, 0);
        no_time.last_modified = None;
        s.record(&no_time, now);
        assert!(!s.unchanged(&no_time));
    }
}
