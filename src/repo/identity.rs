//! `repo.json`: which PostgreSQL cluster a repository belongs to.
//!
//! Created on first use (or by `backupctl check --init`); afterwards every wal-push and
//! backup compares the cluster's system identifier with it, so WAL from two clusters can
//! never mix in one repository.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{layout, PutOptions, RepoError, Repository, RepositoryExt};

/// The newest format this backupctl reads: 1 is a plaintext repository, 2 an encrypted
/// one, 3 and 4 the same once they hold incremental backups (older binaries refuse a
/// format they do not know, before reading any object: one that cannot restore a chain
/// must not restore, or let retention delete, a part of one).
pub const FORMAT: u32 = 4;
/// The format of a repository without encryption.
pub const FORMAT_PLAIN: u32 = 1;
/// The format of an encrypted repository.
pub const FORMAT_ENCRYPTED: u32 = 2;
/// A repository without encryption that holds incremental backups.
pub const FORMAT_INCREMENTAL_PLAIN: u32 = 3;
/// An encrypted repository that holds incremental backups.
pub const FORMAT_INCREMENTAL_ENCRYPTED: u32 = 4;

/// Whether repository format `format` is an encrypted one.
pub fn format_is_encrypted(format: u32) -> bool {
    matches!(format, FORMAT_ENCRYPTED | FORMAT_INCREMENTAL_ENCRYPTED)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoIdentity {
    pub format: u32,
    /// Kept as a string: JSON numbers lose precision above 2^53.
    pub system_identifier: String,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub created: DateTime<Utc>,
    /// Set when the repository was initialised with a key (see [`super::encrypted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
}

/// What repo.json (which stays plaintext, so that a wrong or missing key is refused
/// before any object is read) says about a repository's encryption. No key is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// The object format: [`CIPHER`].
    pub cipher: String,
    /// Ids of the keys that have written to the repository, oldest first; the last one
    /// writes now.
    pub key_ids: Vec<String>,
    /// How a passphrase becomes a key, once one has been used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseKdf>,
}

/// The object format of [`crate::crypto`].
pub const CIPHER: &str = "aes-256-gcm, 64 KiB chunks, HKDF-SHA256 object keys";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassphraseKdf {
    pub kdf: String,
    pub iterations: u32,
    /// Hex; random, made when the first passphrase was used.
    pub salt: String,
}

impl RepoIdentity {
    pub fn new(system_identifier: u64, pg_major: u32, wal_segment_size: u64) -> Self {
        RepoIdentity {
            format: FORMAT_PLAIN,
            system_identifier: system_identifier.to_string(),
            pg_major,
            wal_segment_size,
            created: Utc::now(),
            encryption: None,
        }
    }

    pub async fn load(repo: &dyn Repository) -> anyhow::Result<Option<RepoIdentity>> {
        match repo.get_bytes(layout::REPO_JSON).await {
            Ok(bytes) => {
                // The serde error stays in the chain: `check` tells a damaged file (which
                // may be repaired) from one it could not read (which must stay).
                let id: RepoIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "{}/{} is not valid",
                        repo.describe(),
                        layout::REPO_JSON
                    ))
                })?;
                if id.format > FORMAT {
                    return Err(crate::user_error!(
                        "repository {} has format {}, this backupctl understands up to {FORMAT}; upgrade backupctl",
                        repo.describe(),
                        id.format
                    ));
                }
                Ok(Some(id))
            }
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Make sure the repository belongs to the cluster with `system_identifier`,
    /// creating `repo.json` when the repository is new.
    pub async fn ensure(
        repo: &dyn Repository,
        system_identifier: u64,
        pg_major: u32,
        wal_segment_size: u64,
        encrypted: bool,
    ) -> anyhow::Result<RepoIdentity> {
        if let Some(existing) = Self::load(repo).await? {
            existing.check(repo, system_identifier, encrypted)?;
            return Ok(existing);
        }
        let new = RepoIdentity::new(system_identifier, pg_major, wal_segment_size);
        let body = serde_json::to_vec_pretty(&new)?;
        match repo
            .put_bytes(
                layout::REPO_JSON,
                body,
                PutOptions {
                    if_absent: true,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => {
                tracing::info!(repository = %repo.describe(), system_identifier, "initialised repository");
                Ok(new)
            }
            // Another process initialised it first: compare with what it wrote.
            Err(RepoError::AlreadyExists { .. }) => {
                let existing = Self::load(repo)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("repo.json vanished while initialising"))?;
                existing.check(repo, system_identifier, encrypted)?;
                Ok(existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fail unless this repository belongs to `system_identifier` and is encrypted as
    /// the config says (`encrypted`: it has `[encryption]`). The encryption is checked
    /// when the repository is opened; this catches a repository initialised by another
    /// process after that (so that plaintext never lands in an encrypted repository).
    pub fn check(
        &self,
        repo: &dyn Repository,
        system_identifier: u64,
        encrypted: bool,
    ) -> anyhow::Result<()> {
        match (&self.encryption, encrypted) {
            (Some(info), false) => return Err(encrypted_without_key(&repo.describe(), info)),
            (None, true) => return Err(plaintext_with_key(&repo.describe())),
            _ => {}
        }
        if self.system_identifier != system_identifier.to_string() {
            return Err(crate::user_error!(
                "repository {} belongs to the cluster with system identifier {}, but this cluster's is {}; \
                 give each cluster its own repository.cluster name (or path/prefix)",
                repo.describe(),
                self.system_identifier,
                system_identifier
            ));
        }
        Ok(())
    }

    /// Raise the repository's format to one that says it holds incremental backups
    /// (before the first one is written), keeping its encryption.
    pub async fn require_incremental(repo: &dyn Repository) -> anyhow::Result<()> {
        let Some(mut id) = Self::load(repo).await? else {
            anyhow::bail!("{}/{} is missing", repo.describe(), layout::REPO_JSON);
        };
        let wanted = if format_is_encrypted(id.format) {
            FORMAT_INCREMENTAL_ENCRYPTED
        } else {
            FORMAT_INCREMENTAL_PLAIN
        };
        if id.format >= wanted {
            return Ok(());
        }
        id.format = wanted;
        repo.put_bytes(
            layout::REPO_JSON,
            serde_json::to_vec_pretty(&id)?,
            PutOptions::default(),
        )
        .await
        .with_context(|| {
            format!(
                "raise {}/{} to format {wanted}",
                repo.describe(),
                layout::REPO_JSON
            )
        })?;
        tracing::info!(repository = %repo.describe(), format = wanted, "the repository holds incremental backups from now on: backupctl releases before them refuse it");
        Ok(())
    }

    pub fn system_identifier(&self) -> u64 {
        self.system_identifier.parse().unwrap_or(0)
    }
}

/// The refusal of an encrypted repository opened without a key.
pub fn encrypted_without_key(repo: &str, info: &EncryptionInfo) -> anyhow::Error {
    crate::user_error!(
        "repository {repo} is encrypted (key {}); set encryption.key_file or encryption.key_env to its key",
        info.key_ids.last().map(String::as_str).unwrap_or("?")
    )
}

/// The refusal of a plaintext repository opened with a key.
pub fn plaintext_with_key(repo: &str) -> anyhow::Error {
    crate::user_error!(
        "repository {repo} was initialised without encryption, and encryption is chosen when a \
         repository is initialised (a repository is never part plaintext, part encrypted); \
         to encrypt, point backupctl at a new repository (another repository.cluster, path \
         or prefix) and take a full backup there, or remove [encryption] to use this one"
    )
}
