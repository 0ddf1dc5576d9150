//! The backup manifest (`backups/<id>/manifest.json`) and backup ids.
//!
//! A backup is complete if and only if its manifest exists: data objects are written
//! first, the manifest last. The manifest is self-describing: with the repository alone
//! (no local catalog) a restore knows every object, its checksum, the WAL range it needs
//! and the logical row counts it must reproduce.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::pg::wal::Lsn;
use crate::repo::{layout, PutOptions, RepoError, Repository, RepositoryExt};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Physical,
    Logical,
}

impl BackupKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackupKind::Physical => "physical",
            BackupKind::Logical => "logical",
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "physical" => Ok(BackupKind::Physical),
            "logical" => Ok(BackupKind::Logical),
            _ => Err(format!("{s:?} is not a backup kind (physical, logical)")),
        }
    }
}

/// `YYYYMMDDTHHMMSSZ-<kind>`: sorts by start time, names the kind.
pub fn backup_id(start: DateTime<Utc>, kind: BackupKind) -> String {
    format!("{}-{kind}", start.format("%Y%m%dT%H%M%SZ"))
}

/// The start time and kind encoded in a backup id.
pub fn parse_backup_id(id: &str) -> Option<(DateTime<Utc>, BackupKind)> {
    let (ts, kind) = id.split_once('-')?;
    let t = NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ").ok()?;
    Some((Utc.from_utc_datetime(&t), kind.parse().ok()?))
}

/// One data object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Name inside the backup directory (`base.0.tar.zst`, `db-app.dump.zst`).
    pub name: String,
    /// SHA-256 of the stored (compressed) bytes.
    pub sha256: String,
    pub stored_size: u64,
    /// Size before compression.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceInfo {
    pub oid: u32,
    pub name: String,
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// First WAL segment the backup needs.
    pub start_wal: String,
    /// Last WAL segment the backup needs (replay must reach it for consistency).
    pub stop_wal: String,
    pub wal_segment_size: u64,
    pub pgdata: String,
    #[serde(default)]
    pub tablespaces: Vec<TablespaceInfo>,
    /// Contents of `backup_label` returned by `pg_backup_stop()`.
    pub backup_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Files copied.
    pub files: u64,
    /// The server's `config_file` (outside PGDATA on Debian-style installs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: i64,
    /// The table's OID in the source database (identifies it in the dump's TOC).
    #[serde(default)]
    pub oid: u32,
    /// For a partition: the partitioned table at the top of its tree (`schema.table`),
    /// so tools can total a partitioned table and `restore --table` can expand it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseDump {
    pub name: String,
    /// Object (in `objects`) holding the `pg_dump -Fc` archive.
    pub object: String,
    pub size_bytes: i64,
    pub tables: Vec<TableRows>,
    /// Counts of what the dump's TOC lists, by kind (`TABLE`, `INDEX`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub toc_counts: BTreeMap<String, u64>,
    /// Object (in `objects`) holding the dump's table of contents (`pg_restore -l`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toc_object: Option<String>,
    /// Large objects in the dump (counted in the dump's snapshot).
    #[serde(default)]
    pub large_objects: u64,
    /// Encoding and locale of the source database, used by `restore --create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctype: Option<String>,
}

impl DatabaseDump {
    pub fn total_rows(&self) -> i64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalInfo {
    pub databases: Vec<DatabaseDump>,
    /// Object holding `pg_dumpall --globals-only`.
    pub globals_object: String,
    #[serde(default)]
    pub globals_include_passwords: bool,
    /// `pg_dump --version` of the binary that wrote the dumps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_dump_version: Option<String>,
}

impl LogicalInfo {
    pub fn database(&self, name: &str) -> Option<&DatabaseDump> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn total_rows(&self) -> i64 {
        self.databases.iter().map(|d| d.total_rows()).sum()
    }

    pub fn total_size_bytes(&self) -> i64 {
        self.databases.iter().map(|d| d.size_bytes).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

/// The result of restoring the backup in a scratch place (`backupctl verify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub time: DateTime<Utc>,
    pub outcome: Outcome,
    /// Seconds from start of download to a queryable restored server: the measured RTO.
    pub duration_secs: f64,
    pub checked: Vec<String>,
    #[serde(default)]
    pub failures: Vec<String>,
    #[serde(default)]
    pub scratch_bytes: u64,
}

/// A restore point created with the backup (`pg_create_restore_point`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    pub lsn: Lsn,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub kind: BackupKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub host: String,
    pub cluster: String,
    pub pg_version: String,
    pub pg_version_num: u32,
    /// Kept as a string: JSON numbers lose precision above 2^53.
    pub system_identifier: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub compression: Codec,
    pub objects: Vec<ObjectEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<RestorePoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

impl Manifest {
    pub fn object(&self, name: &str) -> Option<&ObjectEntry> {
        self.objects.iter().find(|o| o.name == name)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.stored_size).sum()
    }

    pub fn original_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    pub fn is_verified_ok(&self) -> bool {
        self.verification
            .as_ref()
            .is_some_and(|v| v.outcome == Outcome::Ok)
    }

    /// Write the manifest (last step of a backup; also after verification).
    pub async fn store(&self, repo: &dyn Repository) -> anyhow::Result<()> {
        let body = serde_json::to_vec_pretty(self)?;
        repo.put_bytes(&layout::manifest_key(&self.id), body, PutOptions::default())
            .await
            .with_context(|| format!("write manifest of backup {}", self.id))?;
        Ok(())
    }

    /// Read the manifest of backup `id`; `Ok(None)` when it has none (incomplete or absent).
    pub async fn load(repo: &dyn Repository, id: &str) -> anyhow::Result<Option<Manifest>> {
        match repo.get_bytes(&layout::manifest_key(id)).await {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parse manifest of backup {id}"))?;
                if m.format > FORMAT {
                    return Err(crate::user_error!(
                        "backup {id} has manifest format {}, this backupctl understands up to {FORMAT}; upgrade backupctl",
                        m.format
                    ));
                }
                Ok(Some(m))
            }
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// What the repository holds under `backups/`.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Complete backups, ordered by start time (oldest first).
    pub complete: Vec<Manifest>,
    /// Backup ids with objects but no manifest, with their newest object time.
    pub incomplete: Vec<(String, Option<DateTime<Utc>>)>,
}

impl Catalog {
    pub async fn load(repo: &dyn Repository) -> anyhow::Result<Catalog> {
        let objects = repo
            .list(layout::BACKUPS_PREFIX)
            .await
            .context("list backups")?;
        Self::load_from(repo, &objects).await
    }

    /// Build from a listing of `backups/` the caller already holds (retention needs the
    /// listing itself too, and two listings could disagree); manifests are read from `repo`.
    pub async fn load_from(
        repo: &dyn Repository,
        objects: &[crate::repo::ObjectMeta],
    ) -> anyhow::Result<Catalog> {
        let mut ids: BTreeMap<String, (bool, Option<DateTime<Utc>>)> = BTreeMap::new();
        for o in objects {
            let Some(id) = layout::backup_id_of(&o.key) else {
                continue;
            };
            let e = ids.entry(id.to_string()).or_insert((false, None));
            if o.key.ends_with(&format!("/{}", layout::MANIFEST)) {
                e.0 = true;
            }
            e.1 = e.1.max(o.last_modified);
        }
        let mut cat = Catalog::default();
        for (id, (has_manifest, newest)) in ids {
            if !has_manifest {
                cat.incomplete.push((id, newest));
                continue;
            }
            match Manifest::load(repo, &id).await? {
                Some(m) => cat.complete.push(m),
                None => cat.incomplete.push((id, newest)),
            }
        }
        cat.complete
            .sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        Ok(cat)
    }

    pub fn find(&self, id: &str) -> Option<&Manifest> {
        self.complete.iter().find(|m| m.id == id)
    }

    pub fn of_kind(&self, kind: BackupKind) -> impl Iterator<Item = &Manifest> {
        self.complete.iter().filter(move |m| m.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_parse_back() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap();
        let id = backup_id(t, BackupKind::Physical);
        assert_eq!(id, "20261122T101500Z-physical");
        assert_eq!(parse_backup_id(&id), Some((t, BackupKind::Physical)));
        let later = backup_id(t + chrono::Duration::seconds(1), BackupKind::Logical);
        assert!(later > id);
        assert_eq!(parse_backup_id("nonsense"), None);
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap();
        let m = Manifest {
            format: FORMAT,
            id: backup_id(t, BackupKind::Physical),
            kind: BackupKind::Physical,
            label: Some("pre-migration".into()),
            host: "db1".into(),
            cluster: "main".into(),
            pg_version: "15.18".into(),
            pg_version_num: 150018,
            system_identifier: "7312345678901234567".into(),
            start_time: t,
            stop_time: t,
            compression: Codec::NONE,
            objects: vec![ObjectEntry {
                name: "base.0.tar".into(),
                sha256: "00".repeat(32),
                stored_size: 10,
                size: 10,
            }],
            physical: Some(PhysicalInfo {
                timeline: 1,
                start_lsn: "0/2000028".parse().unwrap(),
                stop_lsn: "0/2000100".parse().unwrap(),
                start_wal: "000000010000000000000002".into(),
                stop_wal: "000000010000000000000002".into(),
                wal_segment_size: 16 << 20,
                pgdata: "/var/lib/postgresql/15/main".into(),
                tablespaces: vec![],
                backup_label: "START WAL LOCATION: 0/2000028".into(),
                tablespace_map: None,
                files: 1,
                config_file: None,
            }),
            logical: None,
            restore_point: None,
            verification: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"start_lsn\":\"0/2000028\""));
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
