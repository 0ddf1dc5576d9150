//! Object key naming: the one place that knows the repository's layout.
//!
//! ```text
//! repo.json                                   cluster identity (system identifier, version)
//! wal/<TLI+LOG 16 hex>/<segment>[.zst|.gz]    WAL segments, .partial and .backup files
//! wal/<TLI 8 hex>.history                     timeline history files (uncompressed)
//! backups/<backup-id>/manifest.json           written last: present = backup complete
//! backups/<backup-id>/<object>                data objects listed in the manifest
//! leases/<backup-id>.<holder>.json            a running restore or verification of a
//!                                             backup: retention keeps it and its WAL
//! verify/wal.json                             archived WAL objects `verify --wal` read
//!                                             and found intact (a cache: may be deleted)
//! exports/<export-id>/manifest.json           written last, after the read-back check:
//!                                             present = export complete and verified
//! exports/<export-id>/data.dump[.zst|.gz]     `pg_dump -Fc` of one exported month or
//!                                             archived partition
//! ```

use crate::codec::{self, Algorithm};
use crate::pg::wal::{classify, WalFileKind};

pub const REPO_JSON: &str = "repo.json";
pub const WAL_PREFIX: &str = "wal/";
pub const BACKUPS_PREFIX: &str = "backups/";
pub const MANIFEST: &str = "manifest.json";
/// Written by retention into a backup it is about to delete, before the manifest goes:
/// a run killed after that leaves a backup without a manifest that the next run may
/// delete at once, instead of waiting `incomplete_after` as for a backup that may still
/// be running.
pub const DELETING: &str = "deleting";
pub const LEASES_PREFIX: &str = "leases/";
/// What verification remembers between runs; nothing else lists or deletes it.
pub const VERIFY_PREFIX: &str = "verify/";
pub const WAL_CHECKED: &str = "verify/wal.json";

/// Archived data exported to cold storage (`[[archive]] export_after`): only
/// `restore-export` reads them and only a `[retention.exports]` rule deletes them.
pub const EXPORTS_PREFIX: &str = "exports/";

pub fn export_manifest_key(id: &str) -> String {
    format!("{EXPORTS_PREFIX}{id}/{MANIFEST}")
}

pub fn export_object_key(id: &str, name: &str) -> String {
    format!("{EXPORTS_PREFIX}{id}/{name}")
}

/// The export id a key under `exports/` belongs to.
pub fn export_id_of(key: &str) -> Option<&str> {
    key.strip_prefix(EXPORTS_PREFIX)?.split('/').next()
}

/// Key of a lease on backup `id` held by `holder` (host and pid, encoded).
pub fn lease_key(id: &str, holder: &str) -> String {
    format!("{LEASES_PREFIX}{id}.{}.json", encode_name(holder))
}

/// Metadata on WAL objects: digest of the stored bytes and the original size. Objects
/// archived before 2026-11-29 also carry the original's SHA-256 (`source-sha256`); it
/// is now computed only when a re-push must be compared with an archived copy.
pub const META_SHA256: &str = "sha256";
pub const META_SIZE: &str = "size";
pub const META_SOURCE_SHA256: &str = "source-sha256";
pub const META_SOURCE_SIZE: &str = "source-size";

/// The stored-bytes digest recorded in an object's metadata, if any.
pub fn stored_digest(
    metadata: &std::collections::BTreeMap<String, String>,
) -> Option<codec::Digest> {
    Some(codec::Digest {
        sha256: metadata.get(META_SHA256)?.clone(),
        size: metadata.get(META_SIZE)?.parse().ok()?,
    })
}

pub fn backup_prefix(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/")
}

pub fn manifest_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/{MANIFEST}")
}

pub fn backup_object_key(id: &str, name: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/{name}")
}

/// Object name of a database's `pg_dump -Fc` archive inside a logical backup:
/// `db-<encoded name>.dump<suffix>`. Any database name maps to a safe, distinct object
/// name (see [`encode_name`]); the manifest keeps the real name.
pub fn logical_dump_name(database: &str, algorithm: Algorithm) -> String {
    format!(
        "db-{}.dump{}",
        encode_name(database),
        codec::suffix(algorithm)
    )
}

/// Object name of a database dump's table of contents (`pg_restore -l` output).
pub fn logical_toc_name(database: &str, algorithm: Algorithm) -> String {
    format!(
        "db-{}.toc{}",
        encode_name(database),
        codec::suffix(algorithm)
    )
}

/// Object name of the `pg_dumpall --globals-only` script of a logical backup.
pub fn logical_globals_name(algorithm: Algorithm) -> String {
    format!("globals.sql{}", codec::suffix(algorithm))
}

/// Injective, path- and URL-safe encoding of an arbitrary (database) name: ASCII
/// letters, digits, `_` and `-` stay, every other byte becomes `~XX` (hex). No `/`,
/// no `.`, no leading dot, nothing a shell or an S3 key would treat specially.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// The backup id a key under `backups/` belongs to.
pub fn backup_id_of(key: &str) -> Option<&str> {
    key.strip_prefix(BACKUPS_PREFIX)?.split('/').next()
}

/// Key of a WAL file without its compression suffix, or `None` for a name PostgreSQL
/// would never archive.
pub fn wal_key_base(file_name: &str) -> Option<String> {
    match classify(file_name)? {
        WalFileKind::TimelineHistory => Some(format!("{WAL_PREFIX}{file_name}")),
        _ => Some(format!("{WAL_PREFIX}{}/{file_name}", &file_name[..16])),
    }
}

/// Key of a WAL file stored with `algorithm`. History files are always stored as they
/// are: they are tiny and operators read them.
pub fn wal_key(file_name: &str, algorithm: Algorithm) -> Option<String> {
    let base = wal_key_base(file_name)?;
    Some(match classify(file_name)? {
        WalFileKind::TimelineHistory => base,
        _ => format!("{base}{}", codec::suffix(algorithm)),
    })
}

/// The WAL file name and storage algorithm of a key under `wal/`.
pub fn parse_wal_key(key: &str) -> Option<(String, Algorithm)> {
    let name = key.rsplit('/').next()?;
    let algorithm = codec::algorithm_of(name);
    let file = name
        .strip_suffix(codec::suffix(algorithm))
        .filter(|_| algorithm != Algorithm::None)
        .unwrap_or(name);
    wal_key_base(file)
        .filter(|b| key.starts_with(b.as_str()))
        .map(|_| (file.to_string(), algorithm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys() {
        assert_eq!(
            wal_key("000000010000000A000000FF", Algorithm::Zstd).unwrap(),
            "wal/000000010000000A/000000010000000A000000FF.zst"
        );
        assert_eq!(
            wal_key("000000010000000000000002.00000028.backup", Algorithm::Gzip).unwrap(),
            "wal/0000000100000000/000000010000000000000002.00000028.backup.gz"
        );
        assert_eq!(
            wal_key("00000002.history", Algorithm::Zstd).unwrap(),
            "wal/00000002.history"
        );
        assert_eq!(wal_key("../../etc/passwd", Algorithm::Zstd), None);
    }

    #[test]
    fn wal_keys_parse_back() {
        for (name, alg) in [
            ("000000010000000A000000FF", Algorithm::Zstd),
            ("000000010000000A000000FF.partial", Algorithm::Gzip),
            ("000000010000000A000000FF", Algorithm::None),
            ("00000003.history", Algorithm::None),
        ] {
            let key = wal_key(name, alg).unwrap();
            assert_eq!(parse_wal_key(&key), Some((name.to_string(), alg)), "{key}");
        }
        assert_eq!(parse_wal_key("wal/0000000100000000/garbage"), None);
    }

    #[test]
    fn database_names_encode_safely_and_distinctly() {
        let cases = [
            ("app", "app"),
            ("my-app_2", "my-app_2"),
            ("weird db", "weird~20db"),
            ("../etc", "~2E~2E~2Fetc"),
            ("a~20", "a~7E20"),
            ("naïve", "na~C3~AFve"),
            ("x=y'\"", "x~3Dy~27~22"),
        ];
        for (name, want) in cases {
            assert_eq!(encode_name(name), want, "{name}");
        }
        // Distinct names never collide (the escape character itself is escaped).
        assert_ne!(encode_name("a b"), encode_name("a~20b"));
        assert_eq!(
            logical_dump_name("weird db", Algorithm::Zstd),
            "db-weird~20db.dump.zst"
        );
        assert_eq!(logical_globals_name(Algorithm::None), "globals.sql");
    }

    #[test]
    fn backup_keys() {
        let id = "20261122T101500Z-physical";
        assert_eq!(
            manifest_key(id),
            "backups/20261122T101500Z-physical/manifest.json"
        );
        assert_eq!(
            backup_id_of(&backup_object_key(id, "base.0.tar.zst")),
            Some(id)
        );
    }
}
