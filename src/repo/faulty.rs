//! A repository wrapper that injects failures, for tests of what backupctl does when the
//! repository misbehaves: a request failing, a write whose response is lost, a slow
//! server, a body cut short, a listing that lags behind the newest write.
//!
//! [`Faulty`] forwards every request to the repository it wraps and, where its plan says
//! so, fails it or alters its result instead. Faults are tied to request numbers
//! ([`When`]), counted from 1 with atomics as requests arrive, so a plan hits the same
//! requests on every run of a sequential test, and concurrent requests each get a
//! number of their own. With no faults configured it behaves exactly as the wrapped
//! repository (the conformance suite runs against it), and it forwards every required
//! method to the wrapped repository's own implementation, so the backend's semantics
//! (batched deletes, fsyncs) are kept.
//!
//! It is compiled into the library, not only under `cfg(test)`, because the integration
//! tests under `tests/` use it through the library.
//!
//! The errors it injects are those a real failure of that kind produces, with the same
//! [`RepoError::is_transient`]: a failed request is a [`RepoError::Remote`] (transient
//! or not, as configured: a 503 or a 403), a lost response after a write is a timeout,
//! and a body cut short by [`ReadEnd::Error`] is a connection reset; all three of those
//! are transient.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::{
    BodyReader, GetObject, LateMetadata, ObjectMeta, PutOptions, RepoError, RepoResult, Repository,
};

/// The kind of a request, for counting and for aiming a fault at one kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put` and `put_described_after`.
    Put,
    Get,
    Head,
    List,
    /// `delete` and `delete_many` (one request per call, however many keys).
    Delete,
    Sync,
    /// `cleanup_incomplete`.
    Cleanup,
}

impl Op {
    const COUNT: usize = 7;

    /// The verb a real failure of this kind reports (as the S3 backend words it).
    fn verb(self) -> &'static str {
        match self {
            Op::Put => "upload",
            Op::Get => "download",
            Op::Head => "stat",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Sync => "fsync",
            Op::Cleanup => "clean up",
        }
    }
}

/// Which requests a fault hits. Requests are numbered from 1 in the order they reach
/// the wrapper: among all requests, or among those of one [`Op`] when `op` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    /// Count only requests of this kind (and hit only those).
    pub op: Option<Op>,
    /// The first request hit.
    pub from: u64,
    /// How many requests are hit from `from` on; `None`: every one after it too.
    pub count: Option<u64>,
}

impl When {
    /// Only the `n`-th request, of any kind.
    pub fn nth(n: u64) -> When {
        When {
            op: None,
            from: n,
            count: Some(1),
        }
    }

    /// Only the `n`-th request of kind `op`.
    pub fn nth_of(op: Op, n: u64) -> When {
        When {
            op: Some(op),
            from: n,
            count: Some(1),
        }
    }

    /// Every request of kind `op`.
    pub fn every(op: Op) -> When {
        When {
            op: Some(op),
            from: 1,
            count: None,
        }
    }

    /// This request and every later one (of the same kind, if one is set).
    pub fn onwards(self) -> When {
        When {
            count: None,
            ..self
        }
    }

    fn matches(&self, op: Op, seq: Seq) -> bool {
        let n = match self.op {
            Some(wanted) if wanted != op => return false,
            Some(_) => seq.of_op,
            None => seq.total,
        };
        n >= self.from && self.count.is_none_or(|c| n - self.from < c)
    }
}

/// The numbers of one request: among all requests, and among those of its kind.
#[derive(Debug, Clone, Copy)]
struct Seq {
    total: u64,
    of_op: u64,
}

/// How a truncated body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// A clean end of stream: the reader gets a short body and no error, as from a
    /// server that closed the response early. Only a check of the length against
    /// `meta.size` or of a checksum notices.
    Eof,
    /// The next read fails with [`io::ErrorKind::ConnectionReset`] (transient), as when
    /// the connection drops mid-body.
    Error,
}

/// A failure-injecting wrapper around any repository; see the module documentation.
/// Configure it with the builder methods before sharing it.
pub struct Faulty {
    inner: Arc<dyn Repository>,
    failures: Vec<(When, bool)>,
    timeouts_after_write: Vec<When>,
    latency: Duration,
    truncations: Vec<(When, u64, ReadEnd)>,
    omit_newest: Vec<When>,
    total: AtomicU64,
    per_op: [AtomicU64; Op::COUNT],
    injected: AtomicU64,
    healed: AtomicBool,
}

impl Faulty {
    /// A wrapper around `inner` that injects nothing until configured.
    pub fn new(inner: Arc<dyn Repository>) -> Faulty {
        Faulty {
            inner,
            failures: vec![],
            timeouts_after_write: vec![],
            latency: Duration::ZERO,
            truncations: vec![],
            omit_newest: vec![],
            total: AtomicU64::new(0),
            per_op: Default::default(),
            injected: AtomicU64::new(0),
            healed: AtomicBool::new(false),
        }
    }

    /// The requests `when` names fail without reaching the wrapped repository, with a
    /// [`RepoError::Remote`] whose `transient` is `transient`.
    pub fn fail(mut self, when: When, transient: bool) -> Faulty {
        self.failures.push((when, transient));
        self
    }

    /// The puts `when` names reach the wrapped repository, which stores the object;
    /// then the wrapper reports a timeout (a transient error), as when a response is
    /// lost after the server committed the write. Only puts are hit.
    pub fn timeout_after_write(mut self, when: When) -> Faulty {
        self.timeouts_after_write.push(when);
        self
    }

    /// Every request waits `latency` before it is forwarded.
    pub fn latency(mut self, latency: Duration) -> Faulty {
        self.latency = latency;
        self
    }

    /// The bodies of the gets `when` names end after their first `keep` bytes, as `end`
    /// says; `meta` still gives the whole object's size. A body no longer than `keep` is
    /// left alone (and the get does not count as a fault). Only gets are hit.
    pub fn truncate_reads(mut self, when: When, keep: u64, end: ReadEnd) -> Faulty {
        self.truncations.push((when, keep, end));
        self
    }

    /// The listings `when` names leave out their newest object (the latest
    /// `last_modified`; of several equally new, the last by key), as an eventually
    /// consistent listing that has not caught up with the latest write yet. Only lists
    /// are hit.
    pub fn list_omits_newest(mut self, when: When) -> Faulty {
        self.omit_newest.push(when);
        self
    }

    /// Stop injecting anything (latency included) from now on; counting goes on.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests of kind `op` received so far.
    pub fn requests_of(&self, op: Op) -> u64 {
        self.per_op[op as usize].load(Ordering::SeqCst)
    }

    /// Faults injected so far (latency not counted).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The wrapped repository.
    pub fn inner(&self) -> &Arc<dyn Repository> {
        &self.inner
    }

    /// Whether one of `rules` hits this request; counts the fault if so.
    fn hits<'a, T>(
        &self,
        rules: impl IntoIterator<Item = &'a T>,
        when: impl Fn(&T) -> &When,
        op: Op,
        seq: Seq,
    ) -> Option<&'a T> {
        if self.healed.load(Ordering::SeqCst) {
            return None;
        }
        let hit = rules.into_iter().find(|r| when(r).matches(op, seq))?;
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(hit)
    }

    /// Number the request, wait the latency, and fail it if the plan says so.
    async fn begin(&self, op: Op, key: &str) -> RepoResult<Seq> {
        let seq = Seq {
            total: self.total.fetch_add(1, Ordering::SeqCst) + 1,
            of_op: self.per_op[op as usize].fetch_add(1, Ordering::SeqCst) + 1,
        };
        if !self.latency.is_zero() && !self.healed.load(Ordering::SeqCst) {
            tokio::time::sleep(self.latency).await;
        }
        if let Some((_, transient)) = self.hits(&self.failures, |f| &f.0, op, seq) {
            return Err(RepoError::Remote {
                op: op.verb(),
                key: key.to_string(),
                message: format!(
                    "injected failure of request {} ({op:?} {})",
                    seq.total, seq.of_op
                ),
                transient: *transient,
            });
        }
        Ok(seq)
    }

    /// After a put the wrapped repository completed: report a lost response if planned.
    fn after_write(&self, key: &str, seq: Seq) -> RepoResult<()> {
        match self.hits(&self.timeouts_after_write, |w| w, Op::Put, seq) {
            Some(_) => Err(RepoError::io(
                Op::Put.verb(),
                key,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "injected timeout waiting for the response (the object was stored)",
                ),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Repository for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, body: BodyReader, opts: PutOptions) -> RepoResult<u64> {
        let seq = self.begin(Op::Put, key).await?;
        let n = self.inner.put(key, body, opts).await?;
        self.after_write(key, seq)?;
        Ok(n)
    }

    async fn put_described_after(
        &self,
        key: &str,
        body: BodyReader,
        metadata: LateMetadata,
        if_absent: bool,
    ) -> RepoResult<u64> {
        let seq = self.begin(Op::Put, key).await?;
        let n = self
            .inner
            .put_described_after(key, body, metadata, if_absent)
            .await?;
        self.after_write(key, seq)?;
        Ok(n)
    }

    async fn get(&self, key: &str) -> RepoResult<GetObject> {
        let seq = self.begin(Op::Get, key).await?;
        let mut obj = self.inner.get(key).await?;
        let cut = self.truncations.iter().filter(|t| obj.meta.size > t.1);
        if let Some(&(_, keep, end)) = self.hits(cut, |t| &t.0, Op::Get, seq) {
            obj.body = Box::new(Truncated {
                inner: obj.body.take(keep),
                end,
            });
        }
        Ok(obj)
    }

    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>> {
        self.begin(Op::Head, key).await?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> RepoResult<Vec<ObjectMeta>> {
        let seq = self.begin(Op::List, prefix).await?;
        let mut objects = self.inner.list(prefix).await?;
        if objects.is_empty() {
            return Ok(objects);
        }
        if self.hits(&self.omit_newest, |w| w, Op::List, seq).is_some() {
            // `max_by_key` returns the last of equal maxima: the greatest key.
            let newest = objects
                .iter()
                .enumerate()
                .max_by_key(|(_, o)| o.last_modified)
                .map(|(i, _)| i)
                .expect("not empty");
            objects.remove(newest);
        }
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> RepoResult<()> {
        self.begin(Op::Delete, key).await?;
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> RepoResult<()> {
        let first = keys.first().map(String::as_str).unwrap_or_default();
        self.begin(Op::Delete, first).await?;
        self.inner.delete_many(keys).await
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> RepoResult<usize> {
        self.begin(Op::Cleanup, "").await?;
        self.inner.cleanup_incomplete(older_than).await
    }

    async fn leftovers(&self, prefix: &str) -> RepoResult<Vec<super::leftover::Leftover>> {
        self.begin(Op::Cleanup, prefix).await?;
        self.inner.leftovers(prefix).await
    }

    async fn remove_leftovers(&self, which: &[super::leftover::Leftover]) -> RepoResult<usize> {
        self.begin(Op::Cleanup, "").await?;
        self.inner.remove_leftovers(which).await
    }

    async fn sync(&self, key: &str) -> RepoResult<()> {
        self.begin(Op::Sync, key).await?;
        self.inner.sync(key).await
    }
}

/// A body cut after a number of bytes ([`tokio::io::Take`]'s limit), ending as `end`
/// says. Only built for bodies longer than the limit, so reaching it means bytes were
/// withheld.
struct Truncated {
    inner: tokio::io::Take<BodyReader>,
    end: ReadEnd,
}

impl AsyncRead for Truncated {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let at_cut = buf.filled().len() == before && buf.remaining() > 0 && this.inner.limit() == 0;
        if at_cut && this.end == ReadEnd::Error {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "injected connection reset in the middle of the body",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// The environment variable that wraps the configured repository in a [`Faulty`] (only
/// in builds with the `failpoints` feature; see [`Faulty::from_spec`] for its syntax).
pub const SPEC_ENV: &str = "BACKUPCTL_REPO_FAULTS";

impl Faulty {
    /// A wrapper configured by `spec`, so that the fault-injection tests can break the
    /// repository of a `backupctl` process: rules separated by `;`, each one of
    /// - `fail:OP:N[+][:permanent]`: the N-th request of kind OP (`+`: and every later
    ///   one) fails, transiently unless `permanent`;
    /// - `timeout-after-write:put:N[+]`: the put is stored, then reported as timed out;
    /// - `latency:MS`: every request waits MS milliseconds first;
    /// - `truncate:get:N[+]:BYTES[:eof|error]`: the body ends after BYTES bytes;
    /// - `list-omits-newest:list:N[+]`: the listing leaves out its newest object.
    ///
    /// OP is `put`, `get`, `head`, `list`, `delete`, `sync`, `cleanup`, or `any`.
    pub fn from_spec(inner: Arc<dyn Repository>, spec: &str) -> Result<Faulty, String> {
        let mut f = Faulty::new(inner);
        for rule in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let parts: Vec<&str> = rule.split(':').collect();
            let bad = |why: &str| format!("{SPEC_ENV}: rule {rule:?}: {why}");
            let when = |i: usize| -> Result<When, String> {
                let op = match *parts.get(i).ok_or_else(|| bad("no request kind"))? {
                    "any" => None,
                    "put" => Some(Op::Put),
                    "get" => Some(Op::Get),
                    "head" => Some(Op::Head),
                    "list" => Some(Op::List),
                    "delete" => Some(Op::Delete),
                    "sync" => Some(Op::Sync),
                    "cleanup" => Some(Op::Cleanup),
                    other => return Err(bad(&format!("unknown request kind {other:?}"))),
                };
                let n = parts.get(i + 1).ok_or_else(|| bad("no request number"))?;
                let (n, onwards) = match n.strip_suffix('+') {
                    Some(n) => (n, true),
                    None => (*n, false),
                };
                let n: u64 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("the request number counts from 1"))?;
                let w = When {
                    op,
                    from: n,
                    count: Some(1),
                };
                Ok(if onwards { w.onwards() } else { w })
            };
            f = match parts[0] {
                "fail" => {
                    let permanent = match parts.get(3) {
                        None => false,
                        Some(&"permanent") => true,
                        Some(other) => return Err(bad(&format!("unknown flag {other:?}"))),
                    };
                    f.fail(when(1)?, !permanent)
                }
                "timeout-after-write" => f.timeout_after_write(when(1)?),
                "latency" => {
                    let ms: u64 = parts
                        .get(1)
                        .and_then(|m| m.parse().ok())
                        .ok_or_else(|| bad("latency takes milliseconds"))?;
                    f.latency(Duration::from_millis(ms))
                }
                "truncate" => {
                    let keep: u64 = parts
                        .get(3)
                        .and_then(|k| k.parse().ok())
                        .ok_or_else(|| bad("truncate takes the bytes to keep"))?;
                    let end = match parts.get(4) {
                        None | Some(&"eof") => ReadEnd::Eof,
                        Some(&"error") => ReadEnd::Error,
                        Some(other) => return Err(bad(&format!("unknown end {other:?}"))),
                    };
                    f.truncate_reads(when(1)?, keep, end)
                }
                "list-omits-newest" => f.list_omits_newest(when(1)?),
                other => return Err(bad(&format!("unknown fault {other:?}"))),
            };
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(total: u64, of_op: u64) -> Seq {
        Seq { total, of_op }
    }

    #[test]
    fn when_counts_all_requests_or_those_of_one_kind() {
        let w = When::nth(3);
        assert!(!w.matches(Op::Get, seq(2, 2)));
        assert!(w.matches(Op::Get, seq(3, 1)));
        assert!(!w.matches(Op::Get, seq(4, 3)));

        let w = When::nth_of(Op::Delete, 2);
        assert!(!w.matches(Op::Put, seq(2, 2)), "another kind");
        assert!(!w.matches(Op::Delete, seq(5, 1)));
        assert!(w.matches(Op::Delete, seq(9, 2)));
        assert!(!w.matches(Op::Delete, seq(10, 3)));

        let w = When::nth_of(Op::Delete, 2).onwards();
        assert!(!w.matches(Op::Delete, seq(1, 1)));
        assert!(w.matches(Op::Delete, seq(2, 2)));
        assert!(w.matches(Op::Delete, seq(50, 40)));

        let w = When::every(Op::Get);
        assert!(w.matches(Op::Get, seq(7, 1)));
        assert!(!w.matches(Op::List, seq(8, 1)));
    }

    #[test]
    fn specs_parse_into_rules_and_bad_ones_are_named() {
        let inner: Arc<dyn Repository> = Arc::new(crate::repo::local::LocalRepository::new(
            std::env::temp_dir().join("unused"),
        ));
        let f = Faulty::from_spec(
            inner.clone(),
            "fail:put:3; fail:get:2+:permanent; latency:5; truncate:get:1:100:error; \
             list-omits-newest:list:1; timeout-after-write:put:1",
        )
        .unwrap();
        assert_eq!(f.failures.len(), 2);
        assert_eq!(f.failures[0], (When::nth_of(Op::Put, 3), true));
        assert_eq!(f.failures[1], (When::nth_of(Op::Get, 2).onwards(), false));
        assert_eq!(f.latency, Duration::from_millis(5));
        assert_eq!(
            f.truncations[0],
            (When::nth_of(Op::Get, 1), 100, ReadEnd::Error)
        );
        assert_eq!(f.omit_newest, vec![When::nth_of(Op::List, 1)]);
        assert_eq!(f.timeouts_after_write, vec![When::nth_of(Op::Put, 1)]);
        for bad in [
            "fail:post:1",
            "fail:put:0",
            "fail:put",
            "latency:x",
            "melt:put:1",
        ] {
            let e = Faulty::from_spec(inner.clone(), bad).err().unwrap();
            assert!(e.contains(bad), "{e}");
        }
    }
}
