//! Cold storage for archived data (`[[archive]] export_after`): what an export is, how it
//! is named and stored, and the SQL that finds what to export and fingerprints it.
//!
//! An export is one month of an archive table's rows (rows mode) or one archived
//! partition (partitions mode), stored as `exports/<id>/data.dump<suffix>` — a
//! `pg_dump -Fc` archive of a single table, schema and data, compressed by the
//! repository's codec — and described by `exports/<id>/manifest.json`, written only
//! after the stored object was read back and its rows matched the database's. The
//! manifest carries its own checksum (as backup manifests do) and everything needed to
//! restore the rows without the database they came from: the columns and their types,
//! the primary key, the row count and a content fingerprint.
//!
//! The fingerprint is `count(*)` plus the sum of the first 60 bits of `md5(ROW(cols)::text)`
//! over the rows: independent of row order (so no sort), constant memory, and equal for
//! two tables exactly when they hold the same multiset of rows as far as any practical
//! accident goes. It is computed in the database on the source, on the rows loaded back
//! from the stored object, and on the rows deleted, so each step is checked against the
//! same number.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Digest;
use crate::manifest::{canonical_sha256, CHECKSUM_FIELD};
use crate::pg::sql;
use crate::repo::{layout, PutOptions, RepoError, Repository, RepositoryExt};

/// The export manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// One column of the exported table (generated columns are left out: pg_dump does not
/// dump their values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(12,2)`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
}

/// `exports/<id>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub database: String,
    /// The `[[archive]]` policy's source table, `schema.name`.
    pub source_table: String,
    /// `rows` (a month of the archive table) or `partitions` (an archived partition).
    pub mode: String,
    /// What the rows were exported from (and deleted from): `schema.name`.
    pub relation: String,
    /// The table inside the dump (`pg_restore` recreates it under this name).
    pub dumped_table: String,
    /// The archival column.
    pub column: String,
    /// Rows mode: the month, `YYYY-MM`, in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<String>,
    /// Rows mode: `column >= from AND column < to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub columns: Vec<ExportColumn>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    pub rows: i64,
    pub fingerprint: String,
    /// Object name under `exports/<id>/`.
    pub object: String,
    /// Digest of the stored (compressed) bytes.
    pub stored: Digest,
    /// Bytes pg_dump wrote.
    pub original_bytes: u64,
    pub server_version: String,
    pub pg_dump_version: String,
    /// When the stored object was read back and its rows matched.
    pub verified: DateTime<Utc>,
}

/// Whether `id` can be an export id: what [`new_id`] makes (letters, digits, `_`, `-`,
/// and `~` of [`layout::encode_name`]; no `/`, no `.`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 220
        && id.starts_with(|c: char| c.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'~'))
}

/// A new export id: `<UTC time>-<name of what is exported>-<4 hex>`, e.g.
/// `20261203T141500Z-consumption_record_archive_2024_01-3fa2` (the suffix keeps a
/// retry within the same second from reusing the id of an unfinished attempt).
pub fn new_id(now: DateTime<Utc>, name: &str) -> String {
    let mut name = layout::encode_name(name);
    name.truncate(180);
    format!(
        "{}-{name}-{:04x}",
        now.format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    )
}

impl ExportManifest {
    pub fn object_key(&self) -> String {
        layout::export_object_key(&self.id, &self.object)
    }

    /// The bytes stored: pretty JSON with its checksum last.
    pub fn to_stored_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(self)?)?;
        let sum = canonical_sha256(&v);
        v.as_object_mut()
            .expect("a manifest is an object")
            .insert(CHECKSUM_FIELD.into(), serde_json::Value::String(sum));
        Ok(serde_json::to_vec_pretty(&v)?)
    }

    /// Parse the stored manifest of export `id`: its checksum, format and id must hold.
    pub fn parse(id: &str, bytes: &[u8]) -> anyhow::Result<ExportManifest> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)
            .with_context(|| format!("manifest of export {id} is not JSON"))?;
        let recorded = v.as_object_mut().and_then(|o| o.remove(CHECKSUM_FIELD));
        let Some(serde_json::Value::String(recorded)) = recorded else {
            anyhow::bail!("manifest of export {id} has no {CHECKSUM_FIELD}: it was not written by backupctl or was altered");
        };
        let computed = canonical_sha256(&v);
        anyhow::ensure!(
            recorded == computed,
            "manifest of export {id} was altered: its checksum does not match (recorded {recorded}, content hashes to {computed})"
        );
        if let Some(f) = v.get("format").and_then(|f| f.as_u64()) {
            anyhow::ensure!(
                f <= u64::from(FORMAT),
                "manifest of export {id} has format {f}; this backupctl reads up to {FORMAT}: upgrade backupctl"
            );
        }
        let m: ExportManifest = serde_json::from_value(v)
            .with_context(|| format!("manifest of export {id} is unreadable"))?;
        anyhow::ensure!(
            m.id == id,
            "manifest of export {id} describes export {}; it was copied or altered",
            m.id
        );
        anyhow::ensure!(
            m.object.starts_with("data.dump") && !m.object.contains('/'),
            "manifest of export {id} names the object {:?}, not one backupctl writes",
            m.object
        );
        anyhow::ensure!(
            !m.columns.is_empty(),
            "manifest of export {id} lists no columns"
        );
        Ok(m)
    }

    /// Write the manifest: the export is then complete.
    pub async fn store(&self, repo: &dyn Repository) -> anyhow::Result<()> {
        repo.put_bytes(
            &layout::export_manifest_key(&self.id),
            self.to_stored_bytes()?,
            PutOptions::default(),
        )
        .await
        .with_context(|| format!("write the manifest of export {}", self.id))?;
        Ok(())
    }

    /// Export `id`'s manifest; an error names a missing or untrustworthy one.
    pub async fn load(repo: &dyn Repository, id: &str) -> anyhow::Result<ExportManifest> {
        if !valid_id(id) {
            return Err(crate::user_error!(
                "{id:?} is not an export id; `backupctl list` shows the exports"
            ));
        }
        match repo.get_bytes(&layout::export_manifest_key(id)).await {
            Ok(b) => ExportManifest::parse(id, &b),
            Err(RepoError::NotFound { .. }) => Err(crate::user_error!(
                "export {id} is not in {} (no exports/{id}/manifest.json); `backupctl list` shows the exports",
                repo.describe()
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// Every export in the repository, oldest first, and the problems with those that
/// cannot be read (`id: reason`); exports without a manifest (unfinished) are skipped.
pub async fn list(repo: &dyn Repository) -> anyhow::Result<(Vec<ExportManifest>, Vec<String>)> {
    let keys = repo
        .list_keys(layout::EXPORTS_PREFIX)
        .await
        .context("list exports")?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for key in keys {
        let Some(id) = layout::export_id_of(&key) else {
            continue;
        };
        if key != layout::export_manifest_key(id) {
            continue;
        }
        if !valid_id(id) {
            problems.push(format!("{id}: not an export id backupctl writes"));
            continue;
        }
        match ExportManifest::load(repo, id).await {
            Ok(m) => out.push(m),
            Err(e) => problems.push(format!("{id}: {e:#}")),
        }
    }
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok((out, problems))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    /// Exported, verified and dropped from the database.
    Exported,
    /// An earlier run had exported it (the manifest matches the rows); dropped now.
    AlreadyExported,
    WouldExport,
    Failed,
}

/// One month or partition.
#[derive(Debug, Clone, Serialize)]
pub struct ExportItem {
    /// The table the rows are exported from.
    pub relation: String,
    /// Rows mode: `YYYY-MM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub month: Option<String>,
    pub rows: i64,
    pub status: ExportStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the export step of one policy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyExports {
    /// Data wholly before this (the first of a month) is exported.
    pub cutoff: Option<String>,
    pub items: Vec<ExportItem>,
}

impl PolicyExports {
    pub fn failed(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| i.status == ExportStatus::Failed)
            .map(|i| match &i.month {
                Some(m) => format!("{} {m}", i.relation),
                None => i.relation.clone(),
            })
            .collect()
    }
}

/// `SELECT count(*), fingerprint FROM <from>` where `<from>` names a row source aliased
/// `t`, over `columns` (quoted).
pub fn fingerprint_sql(columns: &[String], from: &str) -> String {
    let row = columns
        .iter()
        .map(|c| format!("t.{}", sql::ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // ROW(x) of one column is still a record; md5 of its text form.
    format!(
        "SELECT count(*), coalesce(sum(('x' || substr(md5(ROW({row})::text), 1, 15))::bit(60)::bigint), 0)::text FROM {from}"
    )
}

/// The months of `column` in `relation` before `cutoff` (a month start), with their
/// bounds as text and their row counts: `(YYYY-MM, from, to, rows)`. For `timestamptz`
/// the months are those of `tz` ($2); `cutoff` is $1.
pub fn months_sql(
    relation: &str,
    column: &str,
    key: crate::partitions::calendar::KeyType,
) -> String {
    use crate::partitions::calendar::KeyType;
    let c = sql::ident(column);
    let ty = key.sql();
    // The local month start of each row, as a timestamp without zone.
    let local = match key {
        KeyType::Timestamptz => format!("date_trunc('month', {c} AT TIME ZONE $2::text)"),
        _ => format!("date_trunc('month', {c}::timestamp)"),
    };
    let bound = |e: &str| match key {
        KeyType::Timestamptz => format!("(({e}) AT TIME ZONE $2::text)::text"),
        _ => format!("({e})::{ty}::text"),
    };
    format!(
        "SELECT to_char(m, 'YYYY-MM'), {from}, {to}, n FROM (
           SELECT {local} AS m, count(*) AS n FROM {relation}
            WHERE {c} < $1::text::{ty} AND $2::text IS NOT NULL GROUP BY 1) months
          ORDER BY m",
        from = bound("m"),
        to = bound("m + interval '1 month'"),
    )
}

/// The condition selecting one month's rows.
pub fn month_condition(
    column: &str,
    key: crate::partitions::calendar::KeyType,
    from: &str,
    to: &str,
) -> String {
    let ty = key.sql();
    format!(
        "{c} >= {}::{ty} AND {c} < {}::{ty}",
        sql::literal(from),
        sql::literal(to),
        c = sql::ident(column)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> ExportManifest {
        ExportManifest {
            format: FORMAT,
            id: "20261203T141500Z-t_2024_01".into(),
            created: "2026-12-03T14:15:00Z".parse().unwrap(),
            database: "app".into(),
            source_table: "public.t".into(),
            mode: "rows".into(),
            relation: "archive.t".into(),
            dumped_table: "archive.t_2024_01".into(),
            column: "created_at".into(),
            month: Some("2024-01".into()),
            from: Some("2024-01-01 00:00:00+00".into()),
            to: Some("2024-02-01 00:00:00+00".into()),
            columns: vec![ExportColumn {
                name: "id".into(),
                type_name: "bigint".into(),
                not_null: true,
            }],
            primary_key: vec!["id".into()],
            rows: 3,
            fingerprint: "123".into(),
            object: "data.dump.zst".into(),
            stored: Digest {
                sha256: "ab".into(),
                size: 10,
            },
            original_bytes: 20,
            server_version: "15".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 15".into(),
            verified: "2026-12-03T14:15:02Z".parse().unwrap(),
        }
    }

    #[test]
    fn stored_manifests_check_themselves() {
        let m = manifest();
        let bytes = m.to_stored_bytes().unwrap();
        let back = ExportManifest::parse(&m.id, &bytes).unwrap();
        assert_eq!(back.rows, 3);
        // Another id, a changed value, a foreign object name: refused.
        assert!(ExportManifest::parse("20261203T141500Z-other", &bytes)
            .unwrap_err()
            .to_string()
            .contains("describes export"));
        let altered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"rows\": 3", "\"rows\": 4");
        assert!(ExportManifest::parse(&m.id, altered.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("was altered"));
        let mut evil = m.clone();
        evil.object = "../../backups/x".into();
        let bytes = evil.to_stored_bytes().unwrap();
        assert!(ExportManifest::parse(&m.id, &bytes)
            .unwrap_err()
            .to_string()
            .contains("not one backupctl writes"));
    }

    #[test]
    fn ids() {
        let id = new_id(
            "2026-12-03T14:15:00Z".parse().unwrap(),
            "consumption_record_archive_2024_01",
        );
        assert!(
            id.starts_with("20261203T141500Z-consumption_record_archive_2024_01-")
                && id.len() == 56,
            "{id}"
        );
        assert!(valid_id(&id));
        for bad in ["", "../x", "x", "2026/../x", "2026 x", "2026.x"] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(valid_id(&new_id(Utc::now(), "Usage Stats.2024")));
    }
}
