//! Backups in several repositories: a backup is taken once, into the first repository
//! that receives its kind, and then copied to every other repository that does. The
//! copy streams each object from the first repository, checks it against the digest
//! its manifest records, and writes the manifest last: a copy cut short has no manifest
//! and is never listed as a backup (retention removes it as unfinished).
//!
//! A failed copy to a repository with `required = true` fails the command (the backup
//! stays complete in the first repository, and the error says so); with
//! `required = false` it is a warning, and the next backup is copied again.

use anyhow::Context;

use crate::config::{Config, RepositoryConfig, StoredKind};
use crate::manifest::{BackupKind, Manifest};
use crate::repo::{self, copy::copy_object, layout, Repository};

/// The repository that receives `kind` first (where a new backup is written).
pub fn first_for(cfg: &Config, kind: StoredKind) -> anyhow::Result<RepositoryConfig> {
    cfg.repositories_for(kind)
        .into_iter()
        .next()
        .ok_or_else(|| {
            crate::user_error!(
                "no repository receives {}{}: add \"{}\" to the kinds of one in {}{}",
                kind.name(),
                if kind == StoredKind::Exports {
                    ""
                } else {
                    " backups"
                },
                kind.name(),
                cfg.origin(),
                cfg.selected_repository
                    .as_ref()
                    .map(|r| format!(", or choose another than --repo {r}"))
                    .unwrap_or_default()
            )
        })
}

fn stored_kind(m: &Manifest) -> StoredKind {
    match m.kind {
        BackupKind::Physical => StoredKind::Physical,
        BackupKind::Logical => StoredKind::Logical,
    }
}

/// Copy `manifests`, stored in `src` (the repository `cfg` acts on), to every other
/// repository that receives their kind. Returns the configs acting on the repositories
/// that received a copy.
pub async fn copy_to_others(
    cfg: &Config,
    src: &dyn Repository,
    manifests: &[Manifest],
) -> anyhow::Result<Vec<Config>> {
    let mut reached: Vec<Config> = Vec::new();
    for m in manifests {
        for r in cfg.repositories_for(stored_kind(m)) {
            if r.name == cfg.repository.name {
                continue;
            }
            let c = cfg.with_repository(&r);
            let copied = async {
                let dst = repo::open(&c).await?;
                repo::copy::ensure_same_cluster(src, dst.as_ref(), cfg.encryption.enabled())
                    .await?;
                copy_backup(src, dst.as_ref(), m).await
            }
            .await;
            match copied {
                Ok(bytes) => {
                    tracing::info!(backup = %m.id, repository = %r.name, bytes, "backup copied");
                    if !reached.iter().any(|x| x.repository.name == r.name) {
                        reached.push(c);
                    }
                }
                Err(e) if r.required => {
                    return Err(e.context(format!(
                    "backup {} is complete in repository {}, but its copy to repository {} failed",
                    m.id, cfg.repository.name, r.name
                )))
                }
                Err(e) => tracing::warn!(
                    backup = %m.id,
                    repository = %r.name,
                    "backup {} could not be copied to repository {} (required = false): {e:#}",
                    m.id,
                    r.name
                ),
            }
        }
    }
    Ok(reached)
}

/// Copy every object of backup `m` from `src` to `dst`, the manifest last. Returns the
/// bytes copied.
pub async fn copy_backup(
    src: &dyn Repository,
    dst: &dyn Repository,
    m: &Manifest,
) -> anyhow::Result<u64> {
    let manifest = layout::manifest_key(&m.id);
    let prefix = layout::backup_prefix(&m.id);
    let mut bytes = 0;
    if let Some(parent) = m.parent() {
        // An incremental backup is of use only with its chain: the parent goes first
        // where it is missing (a repository added after it was taken), and the
        // repository's format says it holds incremental backups.
        if dst.head(&layout::manifest_key(parent)).await?.is_none() {
            let pm = match Manifest::read(src, parent).await? {
                Some(Ok(pm)) => pm,
                Some(Err(p)) => anyhow::bail!("{}", p.message(parent)),
                None => anyhow::bail!(
                    "the parent {parent} of incremental backup {} is not in {}",
                    m.id,
                    src.describe()
                ),
            };
            bytes += Box::pin(copy_backup(src, dst, &pm)).await?;
            tracing::info!(backup = %pm.id, repository = %dst.describe(), "copied the parent of an incremental backup first");
        }
        crate::repo::identity::RepoIdentity::require_incremental(dst).await?;
    }
    for o in src
        .list(&prefix)
        .await
        .with_context(|| format!("list backup {}", m.id))?
    {
        if o.key == manifest {
            continue;
        }
        let name = &o.key[prefix.len()..];
        let expected = m
            .objects
            .iter()
            .find(|e| e.name == name)
            .map(|e| crate::codec::Digest {
                sha256: e.sha256.clone(),
                size: e.stored_size,
            });
        bytes += copy_object(src, dst, &o.key, expected, false)
            .await
            .with_context(|| format!("copy {}", o.key))?;
    }
    m.store(dst)
        .await
        .with_context(|| format!("write the manifest of {} in {}", m.id, dst.describe()))?;
    Ok(bytes)
}
