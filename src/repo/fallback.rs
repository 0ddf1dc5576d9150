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

use tokio::io::AsyncReadExt;

use super::{
    layout, leftover, BodyReader, GetObject, LateMetadata, ObjectMeta, PutOptions, RepoResult,
    Repository, RepositoryExt,
};

pub struct Fallback {
    /// `(name, repository)`, in the order they are asked.
    repos: Vec<(String, Arc<dyn Repository>)>,
    /// Repositories after the first that failed to answer: not asked again by this
    /// process (each failure has already cost its retries).
    down: Vec<AtomicBool>,
    /// An object missing from the repositories that answered is an error, not "not
    /// found", while another did not answer (restore, wal-fetch); otherwise (list,
    /// info) what answered is the answer.
    strict: bool,
}

impl Fallback {
    pub fn new(repos: Vec<(String, Arc<dyn Repository>)>, strict: bool) -> Fallback {
        assert!(!repos.is_empty(), "a fallback over no repository");
        let down = repos.iter().map(|_| AtomicBool::new(false)).collect();
        Fallback {
            repos,
            down,
            strict,
        }
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

    /// "Not there" is an answer only when every repository gave it: one that could not
    /// answer may hold the object (wal-fetch must not end recovery on it).
    fn unanswered(&self, key: &str) -> Option<super::RepoError> {
        if !self.strict {
            return None;
        }
        let down: Vec<&str> = self
            .repos
            .iter()
            .zip(&self.down)
            .filter(|(_, d)| d.load(Ordering::Relaxed))
            .map(|((n, _), _)| n.as_str())
            .collect();
        (!down.is_empty()).then(|| super::RepoError::Remote {
            op: "read",
            key: key.to_string(),
            message: format!(
                "not in repository {}, and repository {} did not answer",
                self.repos[0].0,
                down.join(", ")
            ),
            transient: true,
        })
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

    /// To the first repository; a restore lease (`leases/`) to every repository, so
    /// that retention in the one a backup or its WAL is read from sees it too.
    async fn put(&self, key: &str, body: BodyReader, opts: PutOptions) -> RepoResult<u64> {
        if !key.starts_with(layout::LEASES_PREFIX) {
            return self.first().put(key, body, opts).await;
        }
        let mut bytes = Vec::new();
        let mut body = body;
        body.read_to_end(&mut bytes)
            .await
            .map_err(|e| super::RepoError::io("read the body of", key, e))?;
        let n = self
            .first()
            .put_bytes(key, bytes.clone(), opts.clone())
            .await?;
        for (i, _, repo) in self.others() {
            if let Err(e) = repo.put_bytes(key, bytes.clone(), opts.clone()).await {
                self.failed(i, &e);
            }
        }
        Ok(n)
    }

    async fn get(&self, key: &str) -> RepoResult<GetObject> {
        let mut missing = match self.first().get(key).await {
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
                Err(e) => {
                    self.failed(i, &e);
                    if self.strict {
                        missing = e;
                    }
                }
            }
        }
        Err(self.unanswered(key).unwrap_or(missing))
    }

    /// The first repository's answer decides unless it has no such object.
    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>> {
        if let Some(m) = self.first().head(key).await? {
            return Ok(Some(m));
        }
        let mut failure = None;
        for (i, _, repo) in self.others() {
            match repo.head(key).await {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => {
                    self.failed(i, &e);
                    failure = Some(e).filter(|_| self.strict);
                }
            }
        }
        match failure.or_else(|| self.unanswered(key)) {
            Some(e) => Err(e),
            None => Ok(None),
        }
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
        if key.starts_with(layout::LEASES_PREFIX) {
            for (i, _, repo) in self.others() {
                if let Err(e) = repo.delete(key).await {
                    self.failed(i, &e);
                }
            }
        }
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

    /// Every repository after the first that still answers.
    fn copies(&self) -> Vec<(String, Arc<dyn Repository>)> {
        self.others()
            .map(|(_, name, repo)| (name.clone(), repo.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::local::LocalRepository;

    fn local(dir: &std::path::Path) -> Arc<dyn Repository> {
        Arc::new(LocalRepository::new(dir.to_path_buf()))
    }

    #[tokio::test]
    async fn reads_what_the_first_lacks_from_the_next_and_never_mistakes_silence_for_absence() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ra, rb) = (local(a.path()), local(b.path()));
        ra.put_bytes("both", b"a".to_vec(), PutOptions::default())
            .await
            .unwrap();
        rb.put_bytes("both", b"b".to_vec(), PutOptions::default())
            .await
            .unwrap();
        rb.put_bytes("only-b", b"b".to_vec(), PutOptions::default())
            .await
            .unwrap();
        let f = Fallback::new(
            vec![("a".into(), ra.clone()), ("b".into(), rb.clone())],
            true,
        );
        assert_eq!(f.get_bytes("both").await.unwrap(), b"a");
        assert_eq!(f.get_bytes("only-b").await.unwrap(), b"b");
        assert!(f.get("nowhere").await.err().unwrap().is_not_found());
        assert_eq!(f.list_keys("").await.unwrap(), ["both", "only-b"]);
        // A lease reaches every repository; other writes only the first.
        f.put_bytes("leases/x.json", b"l".to_vec(), PutOptions::default())
            .await
            .unwrap();
        assert!(rb.head("leases/x.json").await.unwrap().is_some());
        f.put_bytes("other", b"o".to_vec(), PutOptions::default())
            .await
            .unwrap();
        assert!(rb.head("other").await.unwrap().is_none());
        f.delete("leases/x.json").await.unwrap();
        assert!(rb.head("leases/x.json").await.unwrap().is_none());

        // A second repository that cannot answer (its root is a file): an object the
        // first lacks is an error when strict, absent otherwise; listings go on.
        let file = a.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let broken = local(&file);
        let strict = Fallback::new(
            vec![("a".into(), ra.clone()), ("x".into(), broken.clone())],
            true,
        );
        let err = strict.get("nowhere").await.err().unwrap();
        assert!(!err.is_not_found(), "{err}");
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert!(strict.head("nowhere").await.is_err());
        let lenient = Fallback::new(vec![("a".into(), ra), ("x".into(), broken)], false);
        assert!(lenient.get("nowhere").await.err().unwrap().is_not_found());
        assert!(lenient.head("nowhere").await.unwrap().is_none());
        assert!(lenient
            .list_keys("")
            .await
            .unwrap()
            .contains(&"both".to_string()));
    }
}
