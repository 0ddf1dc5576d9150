//! `backupctl wal-push %p`: PostgreSQL's archive_command.
//!
//! Exit 0 only when the file is durable in the repository. Re-pushing an identical file
//! succeeds (PostgreSQL retries after crashes); a different file under the same name is
//! refused and never overwritten. Segments carry their cluster's system identifier in
//! their first page header, which must match the repository's `repo.json`: two clusters
//! can never mix WAL in one repository.
//!
//! This runs once per 16 MiB segment, serially: one read, one compression, one HEAD and
//! one PUT; no PostgreSQL connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest as _, Sha256};

use crate::cli::WalPushArgs;
use crate::codec::{self, Codec};
use crate::commands::Ctx;
use crate::pg::wal::{self, WalFileKind};
use crate::repo::identity::RepoIdentity;
use crate::repo::{self, layout, ObjectMeta, PutOptions, RepoError, Repository};

pub async fn run(ctx: &Ctx, args: WalPushArgs) -> anyhow::Result<()> {
    let path = args.path;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| crate::user_error!("{}: not a file path", path.display()))?
        .to_string();
    let kind = wal::classify(&name).ok_or_else(|| {
        crate::user_error!(
            "{name} is not a WAL file name PostgreSQL archives; use backupctl wal-push only as archive_command = '... wal-push %p'"
        )
    })?;
    let data = tokio::fs::read(&path)
        .await
        .with_context(|| format!("read {}", path.display()))?;
    let pgdata = pgdata_of(&path);

    // Whose WAL is this? Segments say so in their first page; other files ask pg_control.
    let (system_identifier, seg_size) = match kind {
        WalFileKind::Segment | WalFileKind::Partial => {
            let h = wal::segment_header(&data).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} does not start with a WAL page header; refusing to archive it",
                    path.display()
                )
            })?;
            let expected = wal::Segment::parse(&name[..24], h.segment_size as u64);
            if expected.is_none_or(|s| s.start_lsn(h.segment_size as u64) != h.page_addr) {
                anyhow::bail!(
                    "{} holds WAL for {} on timeline {}, which does not match its name; refusing to archive it",
                    path.display(),
                    h.page_addr,
                    h.tli
                );
            }
            (Some(h.system_identifier), Some(h.segment_size as u64))
        }
        _ => (wal::control_system_identifier(&pgdata).ok(), None),
    };

    let repo = repo::open(&ctx.cfg).await?;
    match RepoIdentity::load(repo.as_ref()).await? {
        Some(id) => {
            if let Some(s) = system_identifier {
                id.check(repo.as_ref(), s)?;
            }
        }
        None => match system_identifier {
            Some(s) => {
                let major = std::fs::read_to_string(pgdata.join("PG_VERSION"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                RepoIdentity::ensure(
                    repo.as_ref(),
                    s,
                    major,
                    seg_size.unwrap_or(wal::DEFAULT_SEGMENT_SIZE),
                )
                .await?;
            }
            None => {
                return Err(crate::user_error!(
                    "repository {} is not initialised and {name} does not say which cluster it belongs to; run `backupctl check --init`",
                    repo.describe()
                ))
            }
        },
    }

    // History files stay readable as they are; everything else is compressed.
    let codec = if kind == WalFileKind::TimelineHistory {
        Codec::NONE
    } else {
        Codec::from_config(&ctx.cfg.compression)
    };
    let key = layout::wal_key(&name, codec.algorithm).expect("classified WAL name");
    let (stored, digest, source_sha) = tokio::task::spawn_blocking(move || {
        let source_sha = hex::encode(Sha256::digest(&data));
        codec::compress_to_vec(&codec, &data).map(|(s, d)| (s, d, (source_sha, data.len())))
    })
    .await?
    .context("compress WAL file")?;

    let mut metadata = BTreeMap::new();
    metadata.insert(layout::META_SHA256.into(), digest.sha256.clone());
    metadata.insert(layout::META_SIZE.into(), digest.size.to_string());
    metadata.insert(layout::META_SOURCE_SHA256.into(), source_sha.0.clone());
    metadata.insert(layout::META_SOURCE_SIZE.into(), source_sha.1.to_string());

    if let Some(existing) = repo.head(&key).await? {
        return compare_existing(repo.as_ref(), &key, &name, &existing, &source_sha.0).await;
    }
    let opts = PutOptions {
        metadata,
        if_absent: true,
    };
    match repo.put_bytes(&key, stored, opts).await {
        Ok(_) => {
            tracing::info!(wal = %name, key = %key, stored = digest.size, original = source_sha.1, "archived");
            Ok(())
        }
        Err(RepoError::AlreadyExists { .. }) => {
            let existing = repo
                .head(&key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{key} vanished while archiving"))?;
            compare_existing(repo.as_ref(), &key, &name, &existing, &source_sha.0).await
        }
        Err(e) => Err(anyhow::Error::from(e).context(format!("archive {name}"))),
    }
}

/// PGDATA for a file PostgreSQL handed us: the parent of `pg_wal`, else the current
/// directory (archive_command runs in PGDATA).
fn pgdata_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "pg_wal"))
        .and_then(|p| p.parent())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The name is taken: succeed if it holds the same content, refuse loudly otherwise.
async fn compare_existing(
    repo: &dyn Repository,
    key: &str,
    name: &str,
    existing: &ObjectMeta,
    source_sha: &str,
) -> anyhow::Result<()> {
    let theirs = match existing.metadata.get(layout::META_SOURCE_SHA256) {
        Some(s) => s.clone(),
        // Written by a process killed between object and metadata: hash the content.
        None => {
            let bytes = repo.get_bytes(key).await?;
            let alg = codec::algorithm_of(key);
            tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let mut dec = codec::Decoder::new(alg, &bytes[..])?;
                let mut h = Sha256::new();
                std::io::copy(&mut dec, &mut HashSink(&mut h))?;
                Ok(hex::encode(h.finalize()))
            })
            .await??
        }
    };
    if theirs == source_sha {
        tracing::info!(wal = %name, "already archived with identical content");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to overwrite {key}: the repository already holds a different {name} \
         (content sha256 {theirs}, this file {source_sha}). Two clusters may be archiving into \
         one repository, or a server was restored without a new timeline. Nothing was changed; \
         investigate before removing either copy"
    )
}

struct HashSink<'a>(&'a mut Sha256);

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgdata_is_the_parent_of_pg_wal() {
        assert_eq!(
            pgdata_of(Path::new("pg_wal/000000010000000000000001")),
            PathBuf::from(".")
        );
        assert_eq!(
            pgdata_of(Path::new(
                "/var/lib/pg/main/pg_wal/000000010000000000000001"
            )),
            PathBuf::from("/var/lib/pg/main")
        );
        assert_eq!(
            pgdata_of(Path::new("/tmp/000000010000000000000001")),
            PathBuf::from(".")
        );
    }
}
