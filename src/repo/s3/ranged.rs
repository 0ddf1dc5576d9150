//! Downloading a large S3 object in ranges, several at a time: one GET stream is
//! limited by the connection's window over the round trip, so on a distant server a
//! restore or a WAL fetch would wait on latency, not bandwidth.
//!
//! The first range's response (which tells the object's size; [`super::FIRST_RANGE`]
//! bytes, all of most WAL segments) streams as it arrives; meanwhile the next
//! [`RANGES_AHEAD`] ranges are fetched, each by a task of its own,
//! and handed on in order. Every range is retried on its own like any request, checked
//! for its length, and asked for with the first response's ETag (`If-Match`, and the
//! ETag each response names is compared too), so an object replaced while it is read
//! fails the download instead of mixing two versions.
//! Dropping the reader stops every fetch.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::task::AbortOnDropHandle;

use super::{classify, RANGES_AHEAD, RANGE_SIZE};
use crate::repo::{retry, RepoError, RepoResult, ATTEMPTS};

/// The object a [`Ranged`] reads.
pub struct Source {
    pub client: Client,
    pub bucket: String,
    /// With the repository's root.
    pub full_key: String,
    /// As the repository's callers name it (for messages).
    pub key: String,
    pub etag: Option<String>,
}

/// The size of the whole object from a `Content-Range` header: `bytes 0-4194303/9000000`.
pub fn total_of(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

impl Source {
    /// Bytes `start..end` of the object, in the pieces they arrived in (joining them
    /// would hold the range twice).
    async fn fetch(&self, start: u64, end: u64) -> RepoResult<Vec<Bytes>> {
        let what = format!("download {} (bytes {start}-{})", self.key, end - 1);
        retry(&what, ATTEMPTS, || async {
            let mut req = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .range(format!("bytes={start}-{}", end - 1));
            if let Some(etag) = &self.etag {
                req = req.if_match(etag);
            }
            let replaced = || RepoError::Remote {
                op: "download",
                key: self.key.clone(),
                message: "the object was replaced while it was being read; read it again".into(),
                transient: false,
            };
            let out = req
                .send()
                .await
                .map_err(|e| match classify("download", &self.key, e) {
                    // 412: the ETag no longer matches.
                    RepoError::AlreadyExists { .. } => replaced(),
                    other => other,
                })?;
            // A server that ignores If-Match still names the version it sent.
            if let (Some(want), Some(got)) = (&self.etag, out.e_tag()) {
                if want != got {
                    return Err(replaced());
                }
            }
            let pieces: Vec<Bytes> = out
                .body
                .collect()
                .await
                .map_err(|e| RepoError::Remote {
                    op: "download",
                    key: self.key.clone(),
                    message: format!("bytes {start}-{}: {e}", end - 1),
                    transient: true,
                })?
                .into_segments()
                .collect();
            let got: usize = pieces.iter().map(Bytes::len).sum();
            if got as u64 != end - start {
                return Err(RepoError::Remote {
                    op: "download",
                    key: self.key.clone(),
                    message: format!(
                        "asked for bytes {start}-{}, the server sent {} bytes",
                        end - 1,
                        got
                    ),
                    transient: true,
                });
            }
            Ok(pieces)
        })
        .await
    }
}

/// The body of a large object: its ranges in order, the next ones fetched meanwhile.
pub struct Ranged {
    reader: StreamReader<Chunks, Bytes>,
    _feeder: AbortOnDropHandle<()>,
}

impl Ranged {
    /// Read the object whose first `first_len` bytes come in `first`, `total` bytes in all.
    pub fn start(source: Source, first: ByteStream, first_len: u64, total: u64) -> Ranged {
        let (tx, rx) = mpsc::channel(1);
        let feeder = tokio::spawn(feed(Arc::new(source), first, first_len, total, tx));
        Ranged {
            reader: StreamReader::new(Chunks(rx)),
            _feeder: AbortOnDropHandle::new(feeder),
        }
    }
}

impl AsyncRead for Ranged {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

/// What the feeder hands the reader.
struct Chunks(mpsc::Receiver<io::Result<Bytes>>);

impl futures_util::Stream for Chunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

type Fetch = AbortOnDropHandle<RepoResult<Vec<Bytes>>>;

/// Start fetches from `next` on until [`RANGES_AHEAD`] are in flight.
fn fill(source: &Arc<Source>, ahead: &mut VecDeque<Fetch>, next: &mut u64, total: u64) {
    while ahead.len() < RANGES_AHEAD && *next < total {
        let (start, end) = (*next, (*next + RANGE_SIZE).min(total));
        let source = source.clone();
        ahead.push_back(AbortOnDropHandle::new(tokio::spawn(async move {
            source.fetch(start, end).await
        })));
        *next = end;
    }
}

async fn feed(
    source: Arc<Source>,
    mut first: ByteStream,
    first_len: u64,
    total: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut ahead = VecDeque::new();
    let mut next = first_len;
    fill(&source, &mut ahead, &mut next, total);
    loop {
        let chunk = match first.next().await {
            None => break,
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(io::Error::other(format!(
                "download {} (bytes 0-{}): {e}",
                source.key,
                first_len - 1
            ))),
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
    while let Some(fetch) = ahead.pop_front() {
        let got = fetch.await;
        let pieces = match got {
            Ok(Ok(pieces)) => pieces,
            Ok(Err(e)) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(io::Error::other(format!(
                        "download {}: a range fetch stopped: {e}",
                        source.key
                    ))))
                    .await;
                return;
            }
        };
        // The next range starts once this one is handed on: what is held stays
        // within RANGES_AHEAD + 1 ranges.
        for piece in pieces {
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
            fill(&source, &mut ahead, &mut next, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_size_comes_from_content_range() {
        assert_eq!(total_of("bytes 0-4194303/9000000"), Some(9_000_000));
        assert_eq!(total_of("bytes 0-0/1"), Some(1));
        assert_eq!(total_of("bytes */9000000"), Some(9_000_000));
        assert_eq!(total_of("bytes 0-10/*"), None);
        assert_eq!(total_of("nonsense"), None);
    }
}
