//! Streaming between synchronous producers/consumers (tar builders, pg_dump pipes, files)
//! and the asynchronous repository, with compression and SHA-256 on the way.
//!
//! Upload: the producer runs on a blocking thread and writes plain bytes into
//! `CountingWriter → Encoder → HashWriter → ChannelWriter`; a bounded channel of fixed-size
//! chunks carries them to `Repository::put`. The stream ends only with an explicit end
//! marker, so a producer that fails or panics can never commit a truncated object: the
//! put sees an error and aborts.
//!
//! Download: `Repository::get` → `SyncIoBridge` → `HashReader` → `Decoder` → consumer on
//! a blocking thread; afterwards the rest of the object is drained so the digest covers
//! every stored byte, and it is compared with the manifest's.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::codec::{
    Algorithm, Compressor, CountingWriter, Decoder, Digest, HashReader, HashWriter,
};
use crate::repo::{GetObject, PutOptions, Repository};

const CHUNK: usize = 256 << 10;
const CHANNEL_DEPTH: usize = 8;
const READ_BUFFER: usize = 256 << 10;

enum Msg {
    Data(Bytes),
    End,
}

/// Blocking-side sender of an upload stream.
struct ChannelWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the repository upload stopped"))
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.send(Msg::End)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let chunk = self.buf.split().freeze();
            self.buf.reserve(CHUNK);
            self.send(Msg::Data(chunk))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send(Msg::Data(chunk))?;
        }
        Ok(())
    }
}

/// Async-side receiver of an upload stream.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.cur.is_empty() {
                let n = self.cur.len().min(out.remaining());
                out.put_slice(&self.cur.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Msg::Data(b))) => self.cur = b,
                Poll::Ready(Some(Msg::End)) => self.ended = true,
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the data source stopped before finishing",
                    )))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An object written by [`put_stream`].
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    /// Digest of the stored (compressed) bytes.
    pub stored: Digest,
    /// Bytes the producer wrote (before compression).
    pub size: u64,
}

/// Store what `produce` writes under `key`, compressed by `compressor` (a [`crate::codec::Codec`], or a
/// pool shared with other streams). `produce` runs on a blocking thread; its error (or
/// panic) fails the upload, which then leaves no object.
pub async fn put_stream<T, F>(
    repo: &Arc<dyn Repository>,
    key: &str,
    compressor: impl Into<Compressor>,
    opts: PutOptions,
    produce: F,
) -> anyhow::Result<(Stored, T)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> anyhow::Result<T> + Send + 'static,
{
    let compressor = compressor.into();
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<(T, u64, Digest)> {
        let cw = ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        };
        let mut enc = compressor.encoder(HashWriter::new(cw))?;
        let mut counting = CountingWriter::new(&mut enc);
        let value = produce(&mut counting)?;
        let raw = counting.count;
        let (cw, digest) = enc.finish()?.finish();
        cw.finish()?;
        Ok((value, raw, digest))
    });
    let reader = ChannelReader {
        rx,
        cur: Bytes::new(),
        ended: false,
    };
    let (uploaded, produced) = tokio::join!(repo.put(key, Box::new(reader), opts), producer);
    let produced = match produced {
        Ok(r) => r,
        Err(e) => return Err(anyhow::anyhow!("writer of {key} panicked: {e}")),
    };
    match (produced, uploaded) {
        (Ok((value, size, stored)), Ok(_)) => Ok((
            Stored {
                key: key.to_string(),
                stored,
                size,
            },
            value,
        )),
        // The producer only saw the channel close: the upload's error is the cause.
        (Err(p), Err(u)) if is_broken_pipe(&p) => Err(u.into()),
        (Err(p), _) => Err(p),
        (Ok(_), Err(u)) => Err(u.into()),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A stored object whose bytes do not match the digest the manifest (or metadata) gives.
#[derive(Debug, thiserror::Error)]
#[error(
    "object {key} failed its checksum: the stored bytes have sha256 {actual} ({actual_size} bytes), \
     expected {expected} ({expected_size} bytes); the object is corrupt or was replaced"
)]
pub struct ChecksumMismatch {
    pub key: String,
    pub expected: String,
    pub expected_size: u64,
    pub actual: String,
    pub actual_size: u64,
}

/// Read object `key` stored with `algorithm`, handing the decompressed stream to
/// `consume` on a blocking thread. With `expected`, every stored byte is checked against
/// it; a mismatch is reported (as [`ChecksumMismatch`]) in preference to whatever error
/// the corrupt bytes caused downstream.
pub async fn get_stream<T, F>(
    repo: &Arc<dyn Repository>,
    key: &str,
    algorithm: Algorithm,
    expected: Option<Digest>,
    consume: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> anyhow::Result<T> + Send + 'static,
{
    let obj = repo.get(key).await?;
    read_object(obj, key, algorithm, expected, consume).await
}

/// [`get_stream`] for an object already opened (e.g. to read its metadata first).
pub async fn read_object<T, F>(
    obj: GetObject,
    key: &str,
    algorithm: Algorithm,
    expected: Option<Digest>,
    consume: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> anyhow::Result<T> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<T> {
        let bridge = tokio_util::io::SyncIoBridge::new_with_handle(obj.body, handle);
        let hashing = HashReader::new(bridge);
        let mut dec = Decoder::new(algorithm, BufReader::with_capacity(READ_BUFFER, hashing))
            .with_context(|| format!("start decompressing {key}"))?;
        let result = consume(&mut dec).and_then(|v| {
            // Read to the end so trailing frames and their checks are seen.
            io::copy(&mut dec, &mut io::sink())?;
            Ok(v)
        });
        let digest = dec.into_inner().into_inner().drain_and_finish();
        if let Some(exp) = expected {
            match digest {
                Ok(d) if d == exp => {}
                Ok(d) => {
                    return Err(ChecksumMismatch {
                        key,
                        expected: exp.sha256,
                        expected_size: exp.size,
                        actual: d.sha256,
                        actual_size: d.size,
                    }
                    .into())
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!("read {key}")));
                }
            }
        }
        result.with_context(|| format!("read {key}"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("reader panicked: {e}"))?
}

/// Download `key` into `dest` atomically: a temp file beside it, fsynced, then renamed.
/// Returns the decompressed size.
pub async fn get_to_file(
    repo: &Arc<dyn Repository>,
    key: &str,
    algorithm: Algorithm,
    expected: Option<Digest>,
    dest: &Path,
) -> anyhow::Result<u64> {
    from_a_sound_copy(repo, key, |repo| {
        let expected = expected.clone();
        async move {
            let obj = repo.get(key).await?;
            object_to_file(obj, key, algorithm, expected, dest, true).await
        }
    })
    .await
}

/// [`get_to_file`] for an object already opened; with `durable` false, the file and
/// its directory are not fsynced (for files whose reader makes them durable itself).
pub async fn object_to_file(
    obj: GetObject,
    key: &str,
    algorithm: Algorithm,
    expected: Option<Digest>,
    dest: &Path,
    durable: bool,
) -> anyhow::Result<u64> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dest = dest.to_path_buf();
    let tmp = tempfile::Builder::new()
        .prefix(".backupctl-")
        .tempfile_in(&dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))?;
    let file = tmp.as_file().try_clone()?;
    let size = read_object(obj, key, algorithm, expected, move |r| {
        let mut w = io::BufWriter::with_capacity(READ_BUFFER, file);
        let n = io::copy(r, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        if durable {
            f.sync_all()?;
        }
        Ok(n)
    })
    .await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        tmp.persist(&dest)
            .with_context(|| format!("rename into {}", dest.display()))?;
        if durable {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    })
    .await??;
    Ok(size)
}

/// Whether `e` says the bytes of an object are bad: they failed their checksum, or
/// (in an encrypted repository, or a stream without a recorded digest) their
/// authentication or their format.
pub fn is_damaged(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<ChecksumMismatch>()
            || c.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::InvalidData)
    })
}

/// Run `read` against `repo`; when what it read of `key` was damaged, again against
/// each of the repository's copies in turn ([`Repository::copies`]), saying so. `read`
/// must start from nothing each time (it overwrites what an earlier attempt wrote).
pub async fn from_a_sound_copy<T, F, Fut>(
    repo: &Arc<dyn Repository>,
    key: &str,
    read: F,
) -> anyhow::Result<T>
where
    F: Fn(Arc<dyn Repository>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let e = match read(repo.clone()).await {
        Err(e) if is_damaged(&e) => e,
        other => return other,
    };
    for (name, copy) in repo.copies() {
        tracing::warn!(object = %key, repository = %name, "{e:#}; reading {key} again from repository {name}");
        match read(copy).await {
            Ok(v) => {
                tracing::warn!(object = %key, repository = %name, "read a sound copy of {key} from repository {name}");
                return Ok(v);
            }
            Err(again) => {
                tracing::warn!(object = %key, repository = %name, "the copy of {key} in repository {name} is no better: {again:#}")
            }
        }
    }
    Err(e)
}

/// Shared by parallel workers: once one fails, the others stop at their next read or
/// write instead of finishing work that will be thrown away (blocking threads cannot be
/// cancelled from outside).
#[derive(Clone, Default)]
pub struct StopFlag(Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    pub fn stop(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: io::copy and tar retry those forever.
            Err(io::Error::other("stopped: another worker failed"))
        } else {
            Ok(())
        }
    }

    pub fn reader<R: Read>(&self, inner: R) -> StopIo<R> {
        StopIo {
            inner,
            flag: self.clone(),
        }
    }

    pub fn writer<W: Write>(&self, inner: W) -> StopIo<W> {
        StopIo {
            inner,
            flag: self.clone(),
        }
    }
}

pub struct StopIo<T> {
    inner: T,
    flag: StopFlag,
}

impl<R: Read> Read for StopIo<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flag.check()?;
        self.inner.read(buf)
    }
}

impl<W: Write> Write for StopIo<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flag.check()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Read from `r` until `buf` is full or `r` ends; returns how much was read.
///
/// A decompressor returns at the end of every zstd frame (512 KiB of input): filling the
/// whole buffer first keeps a restore to one write per buffer, however the stream was
/// framed (a restore of 6.6 GB made 17,170 writes instead of 11,030 without it); an
/// encrypted object's reader needs each chunk whole.
pub fn read_full<R: std::io::Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::repo::local::LocalRepository;

    fn repo() -> (tempfile::TempDir, Arc<dyn Repository>) {
        let d = tempfile::tempdir().unwrap();
        let r: Arc<dyn Repository> = Arc::new(LocalRepository::new(d.path().join("main")));
        (d, r)
    }

    fn zstd() -> Codec {
        Codec {
            algorithm: Algorithm::Zstd,
            level: 3,
            threads: 0,
        }
    }

    /// Regression: the stop error once used ErrorKind::Interrupted, which io::copy and
    /// tar retry forever, so a failed restore spun at 100% CPU instead of stopping.
    #[test]
    fn stopped_workers_fail_instead_of_retrying() {
        let flag = StopFlag::default();
        flag.stop();
        let err = io::copy(&mut flag.reader(&b"data"[..]), &mut io::sink()).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::Interrupted);
        let mut ar = tar::Archive::new(flag.reader(&[0u8; 1024][..]));
        assert!(ar.entries().unwrap().next().unwrap().is_err());
    }

    #[tokio::test]
    async fn round_trip_with_checksum() {
        let (_d, repo) = repo();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 97) as u8).collect();
        let src = data.clone();
        let (stored, ()) = put_stream(
            &repo,
            "x/obj.zst",
            zstd(),
            PutOptions::default(),
            move |w| {
                w.write_all(&src)?;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(stored.size, data.len() as u64);
        let back = get_stream(
            &repo,
            "x/obj.zst",
            Algorithm::Zstd,
            Some(stored.stored),
            |r| {
                let mut v = vec![];
                r.read_to_end(&mut v)?;
                Ok(v)
            },
        )
        .await
        .unwrap();
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn failing_producer_leaves_no_object() {
        let (_d, repo) = repo();
        let err = put_stream(
            &repo,
            "x/bad.zst",
            zstd(),
            PutOptions::default(),
            |w| -> anyhow::Result<()> {
                w.write_all(&vec![7u8; 3 << 20])?;
                anyhow::bail!("pg_dump exited with status 1")
            },
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("pg_dump exited"), "{err:#}");
        assert!(repo.head("x/bad.zst").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn panicking_producer_leaves_no_object() {
        let (_d, repo) = repo();
        let res = put_stream(
            &repo,
            "x/panic",
            Codec::NONE,
            PutOptions::default(),
            |w| -> anyhow::Result<()> {
                w.write_all(&[1u8; 1 << 20])?;
                panic!("boom")
            },
        )
        .await;
        assert!(res.is_err());
        assert!(repo.head("x/panic").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn flipped_byte_is_named() {
        let (d, repo) = repo();
        let (stored, ()) = put_stream(&repo, "x/obj", Codec::NONE, PutOptions::default(), |w| {
            w.write_all(&[5u8; 100_000])?;
            Ok(())
        })
        .await
        .unwrap();
        let path = d.path().join("main/x/obj");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = get_stream(&repo, "x/obj", Algorithm::None, Some(stored.stored), |r| {
            io::copy(r, &mut io::sink())?;
            Ok(())
        })
        .await
        .unwrap_err();
        let mm = err
            .downcast_ref::<ChecksumMismatch>()
            .expect("checksum error");
        assert_eq!(mm.key, "x/obj");
    }

    #[tokio::test]
    async fn get_to_file_is_atomic_and_verified() {
        let (d, repo) = repo();
        let (stored, ()) = put_stream(&repo, "w/seg.zst", zstd(), PutOptions::default(), |w| {
            w.write_all(&[9u8; 1 << 20])?;
            Ok(())
        })
        .await
        .unwrap();
        let dest = d.path().join("out");
        let mut wrong = stored.stored.clone();
        wrong.sha256 = "0".repeat(64);
        assert!(
            get_to_file(&repo, "w/seg.zst", Algorithm::Zstd, Some(wrong), &dest)
                .await
                .is_err()
        );
        assert!(!dest.exists(), "a failed download must not leave the file");
        let n = get_to_file(
            &repo,
            "w/seg.zst",
            Algorithm::Zstd,
            Some(stored.stored),
            &dest,
        )
        .await
        .unwrap();
        assert_eq!(n, 1 << 20);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![9u8; 1 << 20]);
    }
}
