//! The backup manifest (`backups/<id>/manifest.json`) and backup ids.
//!
//! A backup is complete if and only if its manifest exists: data objects are written
//! first, the manifest last. The manifest is self-describing: with the repository alone
//! (no local catalog) a restore knows every object, its checksum, the WAL range it needs
//! and the logical row counts it must reproduce.
//!
//! A manifest checks itself: `manifest_sha256` is the SHA-256 of the rest of it in
//! canonical form, so a changed value is reported as an altered manifest instead of as
//! corrupt data. A manifest that fails to parse or to check is *unreadable*: the
//! [`Catalog`] reports it and leaves it out, so one bad manifest blocks nothing else, and
//! retention keeps it (nothing proves what it is).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::pg::wal::Lsn;
use crate::repo::{layout, PutOptions, RepoError, Repository, RepositoryExt};

/// The format of a full backup's manifest (physical or logical).
pub const FORMAT: u32 = 1;
/// The format of an incremental backup's manifest: a binary that reads only
/// [`FORMAT`] refuses it (it could not restore the backup without its chain).
pub const FORMAT_INCREMENTAL: u32 = 2;
/// The newest manifest format this binary reads.
pub const FORMAT_READ: u32 = FORMAT_INCREMENTAL;

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

/// `YYYYMMDDTHHMMSSZ-incremental`: an incremental physical backup.
pub fn incremental_backup_id(start: DateTime<Utc>) -> String {
    format!("{}-{INCREMENTAL_SUFFIX}", start.format("%Y%m%dT%H%M%SZ"))
}

const INCREMENTAL_SUFFIX: &str = "incremental";

/// The start time and kind encoded in a backup id (an incremental one is physical).
pub fn parse_backup_id(id: &str) -> Option<(DateTime<Utc>, BackupKind)> {
    let (ts, kind) = id.split_once('-')?;
    let t = NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ").ok()?;
    let kind = if kind == INCREMENTAL_SUFFIX {
        BackupKind::Physical
    } else {
        kind.parse().ok()?
    };
    Some((Utc.from_utc_datetime(&t), kind))
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
    /// Every file and directory a restore of this backup holds: name → size for a
    /// file (the size it was copied at), `null` for a directory. What an incremental
    /// child compares with, and what a restore of a chain removes what is no longer
    /// there by. Absent in backups taken before incremental backups existed (they cannot
    /// be parents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_list: Option<FileList>,
    /// Set when this backup is incremental: it holds what changed since its parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalInfo>,
}

/// See [`PhysicalInfo::file_list`]: one line per entry in the stored manifest.
pub type FileList = BTreeMap<String, Option<u64>>;

/// What makes a physical backup incremental.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalInfo {
    /// The backup this one holds the changes since (full or incremental).
    pub parent: String,
    /// The parent's start LSN: pages changed at or after it are in this backup.
    pub since_lsn: Lsn,
    /// Incremental backups from the full one to this one, this one included (1: the
    /// parent is full).
    pub chain_length: u32,
    /// How changed blocks were found: `page-lsn` (every block read, its page LSN
    /// compared) or `wal-summary` (the server's WAL summaries).
    pub method: String,
    /// Relation files stored as their changed blocks.
    pub delta_files: u64,
    /// Relation files unchanged since the parent (nothing stored).
    pub unchanged_files: u64,
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

    /// The incremental part of a physical backup's record, if it is incremental.
    pub fn incremental(&self) -> Option<&IncrementalInfo> {
        self.physical.as_ref()?.incremental.as_ref()
    }

    /// The backup an incremental backup holds the changes since.
    pub fn parent(&self) -> Option<&str> {
        self.incremental().map(|i| i.parent.as_str())
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

    /// Write the manifest (last step of a backup; also after verification), with its
    /// own checksum (`manifest_sha256`).
    pub async fn store(&self, repo: &dyn Repository) -> anyhow::Result<()> {
        let body = self.to_stored_bytes()?;
        repo.put_bytes(&layout::manifest_key(&self.id), body, PutOptions::default())
            .await
            .with_context(|| format!("write manifest of backup {}", self.id))?;
        Ok(())
    }

    /// The bytes [`Manifest::store`] writes: the manifest as pretty JSON with
    /// `manifest_sha256` last.
    pub fn to_stored_bytes(&self) -> anyhow::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Stored<'a> {
            #[serde(flatten)]
            manifest: &'a Manifest,
            manifest_sha256: &'a str,
        }
        // The checksum is over what a reader parses back, not over the values in memory:
        // serde_json's default float parsing is not always exact, and the reader can only
        // hash what it parsed.
        let written: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(self)?)?;
        let sum = canonical_sha256(&written);
        Ok(serde_json::to_vec_pretty(&Stored {
            manifest: self,
            manifest_sha256: &sum,
        })?)
    }

    /// Parse the stored manifest of backup `id`, checking its own checksum, its format
    /// and that it is backup `id`'s. Manifests written before manifests carried a
    /// checksum (no `manifest_sha256`) are accepted as they are.
    pub fn parse(id: &str, bytes: &[u8]) -> Result<Manifest, ManifestProblem> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ManifestProblem::Invalid(format!("not JSON: {e}")))?;
        let recorded = v.as_object_mut().and_then(|o| o.remove(CHECKSUM_FIELD));
        match recorded {
            Some(serde_json::Value::String(recorded)) => {
                let computed = canonical_sha256(&v);
                if recorded != computed {
                    return Err(ManifestProblem::Altered { recorded, computed });
                }
            }
            Some(other) => {
                return Err(ManifestProblem::Invalid(format!(
                    "{CHECKSUM_FIELD} is {other}, not a string"
                )))
            }
            None => tracing::debug!(
                backup = %id,
                "manifest has no {CHECKSUM_FIELD} (written before manifests carried one): not checked"
            ),
        }
        // The format first: a newer manifest may not parse as this version's.
        if let Some(format) = v.get("format").and_then(|f| f.as_u64()) {
            if format > u64::from(FORMAT_READ) {
                return Err(ManifestProblem::NewerFormat(format));
            }
        }
        let m: Manifest = serde_path_to_error::deserialize(v)
            .map_err(|e| ManifestProblem::Invalid(e.to_string()))?;
        if m.id != id {
            return Err(ManifestProblem::Invalid(format!(
                "it describes backup {}, not {id}",
                m.id
            )));
        }
        Ok(m)
    }

    /// Read the manifest of backup `id`; `Ok(None)` when it has none (incomplete or
    /// absent). A manifest that cannot be trusted is an error naming it and the fix.
    pub async fn load(repo: &dyn Repository, id: &str) -> anyhow::Result<Option<Manifest>> {
        match Self::read(repo, id).await? {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(p @ ManifestProblem::NewerFormat(_))) => {
                Err(crate::user_error!("{}", p.message(id)))
            }
            Some(Err(p)) => match Self::from_copies(repo, id, &p).await {
                Some(m) => Ok(Some(m)),
                None => Err(anyhow::anyhow!("{}", p.message(id))),
            },
        }
    }

    /// The manifest of backup `id` as `repo` holds it: `None` when absent, the problem
    /// when it cannot be used. Repository errors other than a key that does not open
    /// it are errors.
    pub async fn read(
        repo: &dyn Repository,
        id: &str,
    ) -> anyhow::Result<Option<Result<Manifest, ManifestProblem>>> {
        match repo.get_bytes(&layout::manifest_key(id)).await {
            Ok(bytes) => Ok(Some(Manifest::parse(id, &bytes))),
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => match e.undecryptable() {
                Some(why) => Ok(Some(Err(ManifestProblem::Undecryptable(why)))),
                None => Err(anyhow::Error::from(e))
                    .with_context(|| format!("read manifest of backup {id}")),
            },
        }
    }

    /// A sound copy of the manifest of `id` from another repository than the one where
    /// it had `problem` ([`Repository::copies`]), saying so; `None` when none has one.
    async fn from_copies(
        repo: &dyn Repository,
        id: &str,
        problem: &ManifestProblem,
    ) -> Option<Manifest> {
        if matches!(problem, ManifestProblem::NewerFormat(_)) {
            return None;
        }
        for (name, copy) in repo.copies() {
            if let Ok(Some(Ok(m))) = Self::read(copy.as_ref(), id).await {
                tracing::warn!(backup = %id, repository = %name, "{}; using the sound copy in repository {name}", problem.describe(id));
                return Some(m);
            }
        }
        None
    }
}

/// The field of a stored manifest holding the SHA-256 of the rest of it.
pub const CHECKSUM_FIELD: &str = "manifest_sha256";

/// SHA-256 (hex) of the canonical form of a manifest without its checksum field: compact
/// JSON, object keys sorted, numbers as serde_json prints them. Canonical rather than the
/// bytes, so the check survives reformatting but not a changed value.
pub(crate) fn canonical_sha256(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = o.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let bytes = serde_json::to_vec(&sorted(v)).expect("a JSON value serializes");
    crate::codec::Digest::of(&bytes).sha256
}

/// Why a stored manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestProblem {
    /// Not JSON, or not a manifest.
    #[error("unreadable: {0}")]
    Invalid(String),
    /// Valid, but its content is not what was written.
    #[error(
        "altered: its checksum does not match (recorded {recorded}, content hashes to {computed})"
    )]
    Altered { recorded: String, computed: String },
    /// Written by a newer backupctl.
    #[error("unreadable: manifest format {0}, this backupctl understands up to {FORMAT_READ}")]
    NewerFormat(u64),
    /// In an encrypted repository: it does not decrypt and authenticate with the
    /// configured keys (altered, cut, moved, or written with another key).
    #[error("undecryptable: {0}")]
    Undecryptable(String),
}

impl ManifestProblem {
    /// What is wrong with backup `id`'s manifest.
    pub fn describe(&self, id: &str) -> String {
        match self {
            ManifestProblem::Invalid(e) => {
                format!(
                    "manifest of backup {id} is unreadable (parse manifest of backup {id}: {e})"
                )
            }
            ManifestProblem::Altered { .. } => format!("manifest of backup {id} was {self}"),
            ManifestProblem::NewerFormat(_) | ManifestProblem::Undecryptable(_) => {
                format!("manifest of backup {id} is {self}")
            }
        }
    }

    /// What to do about it.
    pub fn fix(&self, id: &str) -> String {
        match self {
            ManifestProblem::NewerFormat(_) => "upgrade backupctl".to_string(),
            ManifestProblem::Undecryptable(_) => format!(
                "if another key wrote it, add that key to encryption.previous_key_files; otherwise {}",
                unusable_fix(id)
            ),
            _ => unusable_fix(id),
        }
    }

    /// The whole message: what is wrong and what to do.
    pub fn message(&self, id: &str) -> String {
        format!("{}; {}", self.describe(id), self.fix(id))
    }
}

/// What to do about a manifest that cannot be trusted.
pub fn unusable_fix(id: &str) -> String {
    format!(
        "backup {id} is not used for restores and retention never deletes it; put back an intact copy of backups/{id}/manifest.json, or, if the backup is not needed, delete backups/{id}/ by hand"
    )
}

/// A backup whose manifest exists but cannot be used (see [`ManifestProblem`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub id: String,
    /// From the id, when it parses.
    pub kind: Option<BackupKind>,
    pub start_time: Option<DateTime<Utc>>,
    /// What is wrong with it.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

/// The WAL segment size recorded for a repository: `repo.json`'s, else the one every
/// physical manifest records (an error naming them when they disagree), else
/// PostgreSQL's default. The default is safe only there: every WAL-dependent decision
/// (retention's floor, a restore's WAL range, windows and gaps) is relative to a
/// physical backup, and without one nothing is decided from segment numbers.
pub fn wal_segment_size(repo_json: Option<u64>, backups: &[Manifest]) -> Result<u64, String> {
    if let Some(size) = repo_json {
        return Ok(size);
    }
    let mut sizes: BTreeMap<u64, &str> = BTreeMap::new();
    for m in backups {
        if let Some(p) = &m.physical {
            sizes.entry(p.wal_segment_size).or_insert(&m.id);
        }
    }
    match sizes.len() {
        0 => Ok(crate::pg::wal::DEFAULT_SEGMENT_SIZE),
        1 => Ok(*sizes.keys().next().expect("one size")),
        _ => Err(format!(
            "the repository has no repo.json and its physical backups record different WAL segment sizes ({}); a repository holds one cluster's backups: move the other cluster's backups out, then run `backupctl check --init` on the cluster's host to recreate repo.json",
            sizes
                .iter()
                .map(|(size, id)| format!("{id}: {} MiB", size >> 20))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What the repository holds under `backups/`.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Complete backups, ordered by start time (oldest first).
    pub complete: Vec<Manifest>,
    /// Backup ids with objects but no manifest, with their newest object time.
    pub incomplete: Vec<(String, Option<DateTime<Utc>>)>,
    /// Backups whose manifest exists but cannot be used (not JSON, altered, newer
    /// format): left out of `complete`, so nothing plans with them, and never deleted.
    pub unreadable: Vec<Unreadable>,
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
            // One bad manifest must not hide every other backup: it is reported and
            // skipped. Repository errors (network, permissions) still fail the load.
            let parsed = match Manifest::read(repo, &id).await? {
                Some(Err(p)) => match Manifest::from_copies(repo, &id, &p).await {
                    Some(m) => Ok(m),
                    None => Err(p),
                },
                Some(ok) => ok,
                None => {
                    cat.incomplete.push((id, newest));
                    continue;
                }
            };
            match parsed {
                Ok(m) => cat.complete.push(m),
                Err(p) => {
                    tracing::warn!(backup = %id, "{}", p.message(&id));
                    let parsed = parse_backup_id(&id);
                    cat.unreadable.push(Unreadable {
                        kind: parsed.map(|(_, k)| k),
                        start_time: parsed.map(|(t, _)| t),
                        reason: p.describe(&id),
                        fix: p.fix(&id),
                        id,
                    });
                }
            }
        }
        cat.complete
            .sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        Ok(cat)
    }

    pub fn find(&self, id: &str) -> Option<&Manifest> {
        self.complete.iter().find(|m| m.id == id)
    }

    /// The complete backup `id`, or an error saying why it cannot be used.
    pub fn require(&self, id: &str) -> anyhow::Result<&Manifest> {
        if let Some(m) = self.find(id) {
            return Ok(m);
        }
        if let Some(u) = self.unreadable.iter().find(|u| u.id == id) {
            return Err(anyhow::anyhow!("{}; {}", u.reason, u.fix));
        }
        Err(crate::user_error!(
            "backup {id} does not exist or is incomplete; `backupctl list` shows the backups"
        ))
    }

    /// The WAL segment size to read the repository's WAL with; `repo_json` is what
    /// `repo.json` records (absent when the file is missing). See [`wal_segment_size`].
    pub fn wal_segment_size(&self, repo_json: Option<u64>) -> anyhow::Result<u64> {
        wal_segment_size(repo_json, &self.complete).map_err(|e| crate::user_error!("{e}"))
    }

    pub fn of_kind(&self, kind: BackupKind) -> impl Iterator<Item = &Manifest> {
        self.complete.iter().filter(move |m| m.kind == kind)
    }

    /// What a restore of `m` applies: its full backup first, then each incremental
    /// backup up to `m` (just `[m]` for a full backup); or why it cannot be restored.
    pub fn chain<'a>(&'a self, m: &'a Manifest) -> Result<Vec<&'a Manifest>, String> {
        chain_of(&self.complete, m, |id| {
            self.unreadable
                .iter()
                .find(|u| u.id == id)
                .map(|u| u.reason.clone())
        })
    }

    /// The complete backups that can be restored: every full one, and the incremental
    /// ones whose whole chain is complete and readable. A broken chain is logged.
    pub fn restorable(&self) -> Vec<Manifest> {
        self.complete
            .iter()
            .filter(|m| match self.chain(m) {
                Ok(_) => true,
                Err(why) => {
                    tracing::warn!(backup = %m.id, "cannot be restored: {why}");
                    false
                }
            })
            .cloned()
            .collect()
    }
}

/// The chain of `m` among `complete` (see [`Catalog::chain`]); `unreadable(id)` says why
/// a missing parent's manifest could not be used, when it exists.
pub fn chain_of<'a>(
    complete: &'a [Manifest],
    m: &'a Manifest,
    unreadable: impl Fn(&str) -> Option<String>,
) -> Result<Vec<&'a Manifest>, String> {
    let mut chain = vec![m];
    let mut cur = m;
    while let Some(inc) = cur.incremental() {
        let Some(parent) = complete.iter().find(|p| p.id == inc.parent) else {
            return Err(match unreadable(&inc.parent) {
                Some(why) => format!(
                    "backup {} is incremental and its parent {} is unusable ({why})",
                    cur.id, inc.parent
                ),
                None => format!(
                    "backup {} is incremental and its parent {} is missing or incomplete",
                    cur.id, inc.parent
                ),
            });
        };
        let fits = parent.kind == BackupKind::Physical
            && parent.system_identifier == cur.system_identifier
            && parent.start_time < cur.start_time
            && parent
                .physical
                .as_ref()
                .is_some_and(|p| p.start_lsn == inc.since_lsn && p.file_list.is_some());
        if !fits || chain.len() > complete.len() {
            return Err(format!(
                "backup {} is incremental, but {} is not the parent it was taken from (cluster, start LSN or time differ)",
                cur.id, parent.id
            ));
        }
        chain.push(parent);
        cur = parent;
    }
    chain.reverse();
    Ok(chain)
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
                file_list: None,
                incremental: None,
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

    fn sample() -> Manifest {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap();
        let mut m =
            crate::test_fixtures::manifest("20261122T101500Z-physical", BackupKind::Physical, t, t);
        m.objects = vec![ObjectEntry {
            name: "base.0.tar".into(),
            sha256: "ab".repeat(32),
            stored_size: 10,
            size: 10,
        }];
        // Floats that do not parse back exactly with serde_json's default parser.
        m.verification = Some(crate::test_fixtures::verification(
            t,
            Outcome::Ok,
            0.1 + 0.2,
        ));
        m.physical = Some(crate::test_fixtures::physical_info(1, 2, 2));
        m
    }

    #[test]
    fn stored_manifests_check_their_own_checksum() {
        let m = sample();
        let id = m.id.clone();
        let stored = String::from_utf8(m.to_stored_bytes().unwrap()).unwrap();
        assert!(stored.contains("\"manifest_sha256\": \""), "{stored}");
        let legacy = serde_json::to_string_pretty(&m).unwrap();
        let reformatted = {
            let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
            serde_json::to_string(&v).unwrap()
        };
        let altered_digit = stored.replacen(&"ab".repeat(32), &format!("bb{}", "ab".repeat(31)), 1);
        let altered_size = stored.replacen("\"stored_size\": 10", "\"stored_size\": 11", 1);
        let newer = legacy.replacen("\"format\": 1", "\"format\": 99", 1);
        let other_id = stored.replace(&id, "20261122T101501Z-physical");
        let bad_sum = format!(
            "{}, \"manifest_sha256\": 7}}",
            legacy.trim_end().trim_end_matches('}')
        );
        // (case, bytes, expected: Ok or the start of the problem's description)
        let cases: Vec<(&str, String, Result<(), &str>)> = vec![
            ("as stored", stored.clone(), Ok(())),
            ("written before checksums", legacy.clone(), Ok(())),
            ("reformatted, same values", reformatted, Ok(())),
            (
                "one hex digit of an object's sha256",
                altered_digit,
                Err("was altered: its checksum does not match"),
            ),
            ("an object's size", altered_size, Err("was altered")),
            (
                "one flipped byte",
                {
                    let mut b = stored.clone().into_bytes();
                    b[0] ^= 1;
                    String::from_utf8(b).unwrap()
                },
                Err("is unreadable (parse manifest of backup"),
            ),
            (
                "truncated",
                stored[..stored.len() / 2].to_string(),
                Err("is unreadable"),
            ),
            (
                "newer format",
                newer,
                Err("is unreadable: manifest format 99"),
            ),
            ("another backup's manifest", other_id, Err("was altered")),
            ("checksum not a string", bad_sum, Err("is unreadable")),
        ];
        for (case, bytes, want) in cases {
            let got = Manifest::parse(&id, bytes.as_bytes());
            match (want, got) {
                (Ok(()), Ok(back)) => assert_eq!(back.id, m.id, "{case}"),
                (Err(start), Err(p)) => {
                    let msg = p.message(&id);
                    assert!(
                        msg.starts_with(&format!("manifest of backup {id} "))
                            && msg.contains(start),
                        "{case}: {msg}"
                    );
                    assert!(
                        msg.contains("; "),
                        "{case}: the message says what to do: {msg}"
                    );
                }
                (want, got) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
        }
        // Only the id check catches a manifest copied under another id with its checksum.
        let moved = m.clone();
        let e = Manifest::parse(
            "20261122T101501Z-physical",
            &moved.to_stored_bytes().unwrap(),
        )
        .unwrap_err();
        assert!(e.message("x").contains("describes backup"), "{e:?}");
    }

    #[test]
    fn wal_segment_size_comes_from_the_record() {
        const MB16: u64 = 16 << 20;
        const MB64: u64 = 64 << 20;
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 0).unwrap();
        let phys = |id: &str, seg: u64| {
            let mut m = crate::test_fixtures::manifest(id, BackupKind::Physical, t, t);
            let mut p = crate::test_fixtures::physical_info(1, 2, 2);
            p.wal_segment_size = seg;
            m.physical = Some(p);
            m
        };
        let logical = crate::test_fixtures::manifest("l", BackupKind::Logical, t, t);
        // (case, repo.json, manifests, expected size or a piece of the error)
        type Case<'a> = (&'a str, Option<u64>, Vec<Manifest>, Result<u64, &'a str>);
        let cases: Vec<Case> = vec![
            (
                "repo.json wins",
                Some(MB64),
                vec![phys("a", MB16)],
                Ok(MB64),
            ),
            (
                "manifests without repo.json",
                None,
                vec![phys("a", MB64), phys("b", MB64), logical.clone()],
                Ok(MB64),
            ),
            ("nothing records it", None, vec![logical.clone()], Ok(MB16)),
            ("empty repository", None, vec![], Ok(MB16)),
            (
                "manifests disagree",
                None,
                vec![phys("a", MB16), phys("b", MB64)],
                Err("a: 16 MiB, b: 64 MiB"),
            ),
        ];
        for (case, recorded, backups, want) in cases {
            match (want, wal_segment_size(recorded, &backups)) {
                (Ok(w), Ok(got)) => assert_eq!(got, w, "{case}"),
                (Err(piece), Err(e)) => {
                    assert!(e.contains(piece) && e.contains("repo.json"), "{case}: {e}")
                }
                (want, got) => panic!("{case}: wanted {want:?}, got {got:?}"),
            }
        }
    }
}
