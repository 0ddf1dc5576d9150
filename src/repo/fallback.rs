//! Reading from several repositories: a [`Repository`] that reads from the first and,
//! for an object missing there, from the next one that has it, saying so. Listings are
//! the union (the first repository's entry wins for a key both hold), so that a restore
//! plans with every WAL segment and backup object any repository has.
//!
//! Writes go to the first repository only: commands that write to several
//! repositories do so one repository at a time (see `ops::wal::push` and
//! `ops::backup::copies`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    leftover, BodyReader, GetObject, LateMetadata, ObjectMeta, PutOptions, RepoResult, Repository,
};

pub struct Fallback {
    /// `(name, repository)`, in the order they are asked.
    repos: Vec<(String, Arc<dyn Repository>)>,
    /// Repositories after the first that failed to answer: not asked again by this
    /// process (each failure has already cost its retries).
    down: Vec<AtomicBool>,
}

impl Fallback {
    pub fn new(repos: Vec<(String, Arc<dyn Repository>)>) -> Fallback {
        assert!(!repos.is_empty(), "a fallback over no repository");
        let down = repos.iter().map(|_| AtomicBool::new(false)).collect();
        Fallback { repos, down }
    }

    fn first(&self) -> &dyn Repository {
        self.repos[0].1.as_ref()
    }

    /// The repositories after the first that are still asked, with their index.
    fn others(&self) -> impl Iterator<Item = (usize, &String, &Arc<dyn Repository>)> {
        self.repos
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| !self.down[*i].load(Ordering::Relaxed))
            .map(|(i, (n, r))| (i, n, r))
    }

    fn failed(&self, i: usize, e: &super::RepoError) {
        self.down[i].store(true, Ordering::Relaxed);
        let name = &self.repos[i].0;
        tracing::warn!(repository = %name, "repository {name} did not answer; reading without it: {e}");
    }
}

#[async_trait]
impl Repository for Fallback {
    fn describe(&self) -> String {
        let others: Vec<&str> = self.repos[1..].iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "{} (repository {}; missing objects from {})",
            self.first().describe(),
            self.repos[0].0,
            others.join(", ")
        )
    }

    async fn put(&self, key: &str, body: BodyReader, opts: PutOptions) -> RepoResult<u64> {
        self.first().put(key, body, opts).await
    }

    async fn get(&self, key: &str) -> RepoResult<GetObject> {
        let missing = match self.first().get(key).await {
            Err(e) if e.is_not_found() => e,
            other => return other,
        };
        for (i, name, repo) in self.others() {
            match repo.get(key).await {
                Ok(obj) => {
                    tracing::warn!(
                        object = %key,
                        repository = %name,
                        "missing from repository {}: read from repository {name}",
                        self.repos[0].0
                    );
                    return Ok(obj);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => self.failed(i, &e),
            }
        }
        Err(missing)
    }

    /// The first repository's answer decides unless it has no such object.
    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>> {
        if let Some(m) = self.first().head(key).await? {
            return Ok(Some(m));
        }
        for (i, _, repo) in self.others() {
            match repo.head(key).await {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => self.failed(i, &e),
            }
        }
        Ok(None)
    }

    /// The union; the first repository must answer (what only a repository that does
    /// not answer holds is missing from the answer).
    async fn list(&self, prefix: &str) -> RepoResult<Vec<ObjectMeta>> {
        let mut all = std::collections::BTreeMap::new();
        for o in self.first().list(prefix).await? {
            all.insert(o.key.clone(), o);
        }
        for (i, _, repo) in self.others() {
            match repo.list(prefix).await {
                Ok(objects) => {
                    for o in objects {
                        all.entry(o.key.clone()).or_insert(o);
                    }
                }
                Err(e) => self.failed(i, &e),
            }
        }
        Ok(all.into_values().collect())
    }

    async fn delete(&self, key: &str) -> RepoResult<()> {
        self.first().delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> RepoResult<()> {
        self.first().delete_many(keys).await
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> RepoResult<usize> {
        self.first().cleanup_incomplete(older_than).await
    }

    async fn leftovers(&self, prefix: &str) -> RepoResult<Vec<leftover::Leftover>> {
        self.first().leftovers(prefix).await
    }

    async fn remove_leftovers(&self, which: &[leftover::Leftover]) -> RepoResult<usize> {
        self.first().remove_leftovers(which).await
    }

    async fn put_described_after(
        &self,
        key: &str,
        body: BodyReader,
        metadata: LateMetadata,
        if_absent: bool,
    ) -> RepoResult<u64> {
        self.first()
            .put_described_after(key, body, metadata, if_absent)
            .await
    }

    async fn sync(&self, key: &str) -> RepoResult<()> {
        self.first().sync(key).await
    }
}
