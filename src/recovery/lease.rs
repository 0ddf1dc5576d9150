//! Leases: a running restore or verification of a backup says so in the repository, and
//! retention keeps that backup and the WAL after it until the lease is given back or
//! expires.
//!
//! Without them a retention run (here or on another host) could delete the WAL a
//! restored server is still replaying, or the backup being downloaded: recovery would
//! then end early, part-way through history. A lease is one small object,
//! `leases/<backup id>.<holder>.json`, written before the restore reads anything and
//! deleted when it is done; one that was never given back (a killed process, a restore
//! whose server was never started) stops counting at its expiry. Leases are only ever
//! read by retention, which treats an unreadable one as held (keeping data is the safe
//! side of a doubt).

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::{layout, PutOptions, Repository, RepositoryExt};

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub backup: String,
    /// `restore` or `verify`.
    pub purpose: String,
    /// `host pid N`: who holds it.
    pub holder: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

impl Lease {
    /// One line for retention's reasons: `leased by a restore (host pid 12) until …`.
    pub fn describe(&self) -> String {
        format!(
            "leased by a {} ({}) until {}",
            self.purpose,
            self.holder,
            self.expires.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// A lease this process holds; [`Held::release`] gives it back.
#[derive(Debug)]
pub struct Held {
    pub key: String,
    pub lease: Lease,
}

/// Take a lease on backup `backup` for `ttl`.
pub async fn acquire(
    repo: &dyn Repository,
    backup: &str,
    purpose: &str,
    ttl: Duration,
) -> anyhow::Result<Held> {
    let holder = format!(
        "{} pid {}",
        crate::host::local_hostname(),
        std::process::id()
    );
    let created = Utc::now();
    let lease = Lease {
        backup: backup.to_string(),
        purpose: purpose.to_string(),
        holder: holder.clone(),
        created,
        // A configured lifetime beyond chrono's range means "practically forever".
        expires: chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|d| created.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    };
    let key = layout::lease_key(backup, &holder);
    let body = serde_json::to_vec_pretty(&lease)?;
    repo.put_bytes(&key, body, PutOptions::default())
        .await
        .with_context(|| format!("take a lease on backup {backup} ({key})"))?;
    tracing::debug!(key = %key, expires = %lease.expires, "lease taken");
    Ok(Held { key, lease })
}

impl Held {
    /// Give the lease back. A failure only delays retention until the lease expires.
    pub async fn release(self, repo: &dyn Repository) {
        if let Err(e) = repo.delete(&self.key).await {
            tracing::warn!(key = %self.key, error = %e, "could not give the lease back; retention ignores it after {}", self.lease.expires);
        }
    }
}

/// Every lease in the repository: `(key, lease)`, the lease `None` when the object is
/// unreadable (then the backup id comes from the key).
pub async fn load_all(repo: &dyn Repository) -> anyhow::Result<Vec<(String, Option<Lease>)>> {
    let mut out = vec![];
    for o in repo
        .list(layout::LEASES_PREFIX)
        .await
        .context("list leases")?
    {
        let lease = match repo.get_bytes(&o.key).await {
            Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).ok(),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e).with_context(|| format!("read lease {}", o.key)),
        };
        out.push((o.key, lease));
    }
    Ok(out)
}

/// The backups the leases in `all` keep at `now`, with why: unexpired leases, and
/// unreadable ones (named by their key). Expired ones keep nothing.
pub fn held(all: &[(String, Option<Lease>)], now: DateTime<Utc>) -> Vec<(String, String)> {
    all.iter()
        .filter_map(|(key, lease)| match lease {
            Some(l) if l.expires > now => Some((l.backup.clone(), l.describe())),
            Some(_) => None,
            None => {
                let name = key.strip_prefix(layout::LEASES_PREFIX)?;
                let backup = name.split('.').next()?.to_string();
                Some((
                    backup,
                    format!("lease {key} is unreadable: kept to be safe"),
                ))
            }
        })
        .collect()
}

/// The keys of expired leases (retention removes them).
pub fn expired(all: &[(String, Option<Lease>)], now: DateTime<Utc>) -> Vec<String> {
    all.iter()
        .filter(|(_, l)| l.as_ref().is_some_and(|l| l.expires <= now))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, 0, 0).unwrap()
    }

    fn lease(backup: &str, expires: u32) -> Lease {
        Lease {
            backup: backup.into(),
            purpose: "restore".into(),
            holder: "db1 pid 7".into(),
            created: t(1),
            expires: t(expires),
        }
    }

    #[test]
    fn unexpired_and_unreadable_leases_hold_expired_ones_do_not() {
        let all = vec![
            (
                "leases/20261122T010000Z-physical.a.json".to_string(),
                Some(lease("20261122T010000Z-physical", 5)),
            ),
            (
                "leases/20261121T010000Z-physical.b.json".to_string(),
                Some(lease("20261121T010000Z-physical", 2)),
            ),
            ("leases/20261120T010000Z-physical.c.json".to_string(), None),
        ];
        let held = held(&all, t(3));
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["20261122T010000Z-physical", "20261120T010000Z-physical"]
        );
        assert!(held[0]
            .1
            .starts_with("leased by a restore (db1 pid 7) until 2026-11-22 05:00:00"));
        assert!(held[1].1.contains("unreadable"));
        assert_eq!(
            expired(&all, t(3)),
            vec!["leases/20261121T010000Z-physical.b.json".to_string()]
        );
    }

    #[tokio::test]
    async fn a_lifetime_beyond_the_calendar_does_not_panic() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::repo::local::LocalRepository::new(d.path().to_path_buf());
        let h = acquire(&repo, "20261122T010000Z-physical", "restore", Duration::MAX)
            .await
            .unwrap();
        assert_eq!(h.lease.expires, DateTime::<Utc>::MAX_UTC);
    }

    #[tokio::test]
    async fn acquire_and_release_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::repo::local::LocalRepository::new(d.path().to_path_buf());
        let h = acquire(
            &repo,
            "20261122T010000Z-physical",
            "verify",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let all = load_all(&repo).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_ref().unwrap(), &h.lease);
        assert_eq!(held(&all, Utc::now()).len(), 1);
        h.release(&repo).await;
        assert!(load_all(&repo).await.unwrap().is_empty());
    }
}
