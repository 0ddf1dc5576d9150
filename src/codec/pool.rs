//! One set of compression threads shared by several upload streams.
//!
//! A physical backup writes `workers` tar parts at once. Compressing each part on its own
//! thread ties a core to a part: parts of equal size can take very different times (a
//! table of text compresses at a third of the speed of pgbench's repetitive rows), and
//! the slowest part then finishes alone while the other cores wait. Here each stream cuts
//! what it is given into [`FRAME_SIZE`] blocks and queues them on one [`FramePool`]; any
//! idle thread takes the next block of whichever stream, and every stream writes its
//! frames back in order. The output is the same as a single thread would write: zstd
//! frames identical to [`super::ZstdFrames`]', or one gzip member per block (any gzip
//! reader, and [`super::Decoder`], reads members as one stream).
//!
//! Memory: per stream, at most [`FramePool::depth`] blocks in flight (input and output)
//! plus the one being filled; per thread, one compression context. The depth shrinks as
//! streams are added, so that all streams together keep about `2 × threads + streams`
//! blocks in flight: memory grows with the worker count, not with its square.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use super::{frame_compressor, Algorithm, Codec, Encoder, FRAME_SIZE};

/// How an upload stream is compressed.
#[derive(Clone)]
pub enum Compressor {
    /// On the thread that writes the stream (or zstd's own threads, `codec.threads > 0`).
    Inline(Codec),
    /// By a pool shared with other streams.
    Pool(Arc<FramePool>),
}

impl From<Codec> for Compressor {
    fn from(codec: Codec) -> Self {
        Compressor::Inline(codec)
    }
}

impl Compressor {
    /// A pool of `threads` threads for `codec`, or inline compression where a pool does
    /// not apply (no compression, or zstd configured with threads of its own).
    pub fn shared(codec: Codec, threads: usize) -> io::Result<Compressor> {
        let pooled = match codec.algorithm {
            Algorithm::Zstd => codec.threads == 0,
            Algorithm::Gzip => true,
            Algorithm::None => false,
        };
        Ok(if pooled && threads > 0 {
            Compressor::Pool(FramePool::new(codec, threads)?)
        } else {
            Compressor::Inline(codec)
        })
    }

    pub fn codec(&self) -> Codec {
        match self {
            Compressor::Inline(c) => *c,
            Compressor::Pool(p) => p.codec,
        }
    }

    /// Wrap `w` so that what is written to the result reaches `w` compressed.
    pub fn encoder<W: Write>(&self, w: W) -> io::Result<Encoder<W>> {
        match self {
            Compressor::Inline(c) => c.encoder(w),
            Compressor::Pool(p) => Ok(Encoder::Pooled(PooledFrames::new(w, p.clone()))),
        }
    }
}

/// A block's input and its compressed form; both buffers go back to the stream for reuse.
#[derive(Default)]
struct Block {
    input: Vec<u8>,
    out: Vec<u8>,
}

struct Job {
    block: Block,
    reply: mpsc::SyncSender<io::Result<Block>>,
}

/// Threads compressing [`FRAME_SIZE`] blocks for any number of streams, first come first
/// served. The threads end when the pool and every stream using it are gone.
pub struct FramePool {
    codec: Codec,
    threads: usize,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Streams currently writing through the pool.
    streams: AtomicUsize,
}

impl FramePool {
    pub fn new(codec: Codec, threads: usize) -> io::Result<Arc<FramePool>> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn(move || work(codec, &rx))?;
        }
        Ok(Arc::new(FramePool {
            codec,
            threads,
            jobs: Mutex::new(tx),
            streams: AtomicUsize::new(0),
        }))
    }

    /// Blocks a stream may keep in flight: its share of two per thread, plus one, so
    /// that every thread stays busy however many streams are left (2 threads and 2
    /// streams: 3 each; one stream left: 5; 16 threads and 16 streams: 3 each).
    pub fn depth(&self) -> usize {
        let streams = self.streams.load(Ordering::Relaxed).max(1);
        1 + (2 * self.threads).div_ceil(streams)
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.send(job)
            .map_err(|_| io::Error::other("the compression threads stopped"))
    }
}

fn work(codec: Codec, jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut zstd = None;
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job { mut block, reply } = job;
        // A panic fails this block's stream, not the thread: the pool keeps its size.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            compress_block(codec, &mut zstd, &block.input, &mut block.out)
        }))
        .unwrap_or_else(|_| {
            zstd = None;
            Err(io::Error::other("the compressor panicked"))
        })
        .map(|()| block);
        // The stream may have given up (its writer failed and was dropped): nothing to do.
        let _ = reply.send(done);
    }
}

/// Compress `input` into `out` (replacing its contents) as one self-contained frame.
fn compress_block(
    codec: Codec,
    zstd: &mut Option<zstd::bulk::Compressor<'static>>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    match codec.algorithm {
        Algorithm::Zstd => {
            let c = match zstd {
                Some(c) => c,
                None => zstd.insert(frame_compressor(codec.level)?),
            };
            out.reserve(zstd::zstd_safe::compress_bound(input.len()));
            c.compress_to_buffer(input, out)?;
        }
        Algorithm::Gzip => {
            let mut e =
                flate2::write::GzEncoder::new(out, flate2::Compression::new(codec.level as u32));
            e.write_all(input)?;
            e.finish()?;
        }
        Algorithm::None => out.extend_from_slice(input),
    }
    Ok(())
}

/// A compressing writer whose blocks are compressed by a [`FramePool`]; call
/// [`PooledFrames::finish`] to wait for the last of them.
pub struct PooledFrames<W: Write> {
    inner: W,
    pool: Arc<FramePool>,
    buf: Vec<u8>,
    inflight: VecDeque<mpsc::Receiver<io::Result<Block>>>,
    spare: Vec<Block>,
    frames: u64,
    /// Set by the first error: a block may have been lost, so the stream must not go on
    /// (a later `finish` would otherwise end a valid-looking stream without it).
    failed: bool,
    _counted: Counted,
}

/// A stream's place in [`FramePool::streams`], given up when the stream ends.
struct Counted(Arc<FramePool>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<W: Write> PooledFrames<W> {
    pub fn new(inner: W, pool: Arc<FramePool>) -> Self {
        pool.streams.fetch_add(1, Ordering::Relaxed);
        PooledFrames {
            inner,
            _counted: Counted(pool.clone()),
            pool,
            buf: Vec::with_capacity(FRAME_SIZE),
            inflight: VecDeque::new(),
            spare: vec![],
            frames: 0,
            failed: false,
        }
    }

    /// Fail at once if an earlier call failed; remember if `step` fails.
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to this compressed stream failed",
            ));
        }
        let result = step(self);
        self.failed = result.is_err();
        result
    }

    /// Queue the buffered block, first writing out the oldest if the stream already has
    /// as many in flight as it may.
    fn submit(&mut self) -> io::Result<()> {
        while self.inflight.len() >= self.pool.depth() {
            self.collect()?;
        }
        let mut next = self.spare.pop().unwrap_or_default();
        next.input.clear();
        next.input.reserve(FRAME_SIZE);
        let input = std::mem::replace(&mut self.buf, next.input);
        let (reply, rx) = mpsc::sync_channel(1);
        self.pool.submit(Job {
            block: Block {
                input,
                out: next.out,
            },
            reply,
        })?;
        self.inflight.push_back(rx);
        self.frames += 1;
        Ok(())
    }

    /// Wait for the oldest block in flight and write its frame.
    fn collect(&mut self) -> io::Result<()> {
        let Some(rx) = self.inflight.pop_front() else {
            return Ok(());
        };
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("a compression thread stopped"))??;
        self.inner.write_all(&block.out)?;
        // Keep buffers for reuse only up to the current depth (it shrinks when other
        // streams start).
        if self.inflight.len() + self.spare.len() < self.pool.depth() {
            self.spare.push(block);
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.inflight.is_empty() {
            self.collect()?;
        }
        Ok(())
    }

    /// Compress what is buffered (an empty frame if nothing was ever written, so the
    /// result is always a valid stream), write every frame, and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.guarded(|s| {
            if !s.buf.is_empty() || s.frames == 0 {
                s.submit()?;
            }
            s.drain()?;
            s.inner.flush()
        })?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for PooledFrames<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.guarded(|s| {
            let n = data.len().min(FRAME_SIZE - s.buf.len());
            s.buf.extend_from_slice(&data[..n]);
            if s.buf.len() == FRAME_SIZE {
                s.submit()?;
            }
            Ok(n)
        })
    }

    /// Ends the current frame early and writes every frame, so everything written so far
    /// can be decoded.
    fn flush(&mut self) -> io::Result<()> {
        self.guarded(|s| {
            if !s.buf.is_empty() {
                s.submit()?;
            }
            s.drain()?;
            s.inner.flush()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decoder, ZstdFrames};
    use super::*;
    use std::io::Read;

    fn codec(algorithm: Algorithm, level: i32) -> Codec {
        Codec {
            algorithm,
            level,
            threads: 0,
        }
    }

    /// Half repetitive, half pseudo-random: blocks that compress at different speeds.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|i| {
                if (i / 70_000) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    fn decode(algorithm: Algorithm, stored: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        Decoder::new(algorithm, stored)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Write `data` through a pooled encoder in pieces of `piece` bytes.
    fn pooled(c: &Compressor, data: &[u8], piece: usize) -> Vec<u8> {
        let mut enc = c.encoder(Vec::new()).unwrap();
        for chunk in data.chunks(piece.max(1)) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    #[test]
    fn pooled_zstd_is_byte_identical_to_one_thread() {
        let pool = Compressor::shared(codec(Algorithm::Zstd, 3), 3).unwrap();
        assert!(matches!(pool, Compressor::Pool(_)));
        for len in [0, 1, FRAME_SIZE - 1, FRAME_SIZE, 5 * FRAME_SIZE + 12_345] {
            let data = sample(len);
            let mut one = ZstdFrames::new(Vec::new(), 3).unwrap();
            one.write_all(&data).unwrap();
            let one = one.finish().unwrap();
            for piece in [1000, 256 << 10, 3 << 20] {
                assert_eq!(pooled(&pool, &data, piece), one, "len {len}, piece {piece}");
            }
        }
    }

    #[test]
    fn pooled_gzip_members_read_back_as_one_stream() {
        let pool = Compressor::shared(codec(Algorithm::Gzip, 6), 2).unwrap();
        for len in [0, 10, 3 * FRAME_SIZE + 7] {
            let data = sample(len);
            let stored = pooled(&pool, &data, 64 << 10);
            assert_eq!(decode(Algorithm::Gzip, &stored), data, "len {len}");
        }
    }

    #[test]
    fn streams_sharing_a_pool_keep_their_own_order() {
        let pool = Compressor::shared(codec(Algorithm::Zstd, 1), 2).unwrap();
        let inputs: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let mut d = sample(3 * FRAME_SIZE + i * 1000);
                d.rotate_left(i * 77_777);
                d
            })
            .collect();
        std::thread::scope(|s| {
            for data in &inputs {
                let pool = pool.clone();
                s.spawn(move || {
                    let stored = pooled(&pool, data, 100_000);
                    assert_eq!(&decode(Algorithm::Zstd, &stored), data);
                });
            }
        });
    }

    #[test]
    fn flush_makes_everything_written_so_far_decodable() {
        let pool = Compressor::shared(codec(Algorithm::Zstd, 3), 2).unwrap();
        let mut enc = pool.encoder(Vec::new()).unwrap();
        enc.write_all(b"first part").unwrap();
        enc.flush().unwrap();
        let Encoder::Pooled(p) = &enc else {
            panic!("not pooled")
        };
        assert_eq!(decode(Algorithm::Zstd, &p.inner), b"first part");
        enc.write_all(b", second").unwrap();
        let stored = enc.finish().unwrap();
        assert_eq!(decode(Algorithm::Zstd, &stored), b"first part, second");
    }

    #[test]
    fn the_depth_per_stream_shrinks_as_streams_are_added() {
        let pool = FramePool::new(codec(Algorithm::Zstd, 1), 16).unwrap();
        assert_eq!(pool.depth(), 33);
        let streams: Vec<_> = (0..16)
            .map(|_| PooledFrames::new(Vec::new(), pool.clone()))
            .collect();
        assert_eq!(pool.depth(), 3);
        drop(streams);
        let two = FramePool::new(codec(Algorithm::Zstd, 1), 2).unwrap();
        let a = PooledFrames::new(Vec::new(), two.clone());
        let b = PooledFrames::new(Vec::new(), two.clone());
        assert_eq!(two.depth(), 3);
        drop(b);
        assert_eq!(two.depth(), 5);
        // A finished stream gives up its place too.
        a.finish().unwrap();
        assert_eq!(two.streams.load(Ordering::Relaxed), 0);
        assert_eq!(pool.streams.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_pool_where_it_cannot_help() {
        let none = Compressor::shared(codec(Algorithm::None, 0), 2).unwrap();
        assert!(matches!(none, Compressor::Inline(_)));
        let own_threads = Compressor::shared(
            Codec {
                threads: 2,
                ..codec(Algorithm::Zstd, 3)
            },
            2,
        )
        .unwrap();
        assert!(matches!(own_threads, Compressor::Inline(_)));
    }

    #[test]
    fn a_failing_destination_fails_the_stream() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let pool = Compressor::shared(codec(Algorithm::Zstd, 3), 2).unwrap();
        let mut enc = pool.encoder(Broken).unwrap();
        let data = sample(8 * FRAME_SIZE);
        let err = enc.write_all(&data).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        // The stream stays failed: nothing written after the error, and no clean end.
        assert!(enc.write(b"more").is_err());
        assert!(enc.flush().is_err());
        assert!(enc.finish().is_err());
        // The pool still serves other streams.
        let stored = pooled(&pool, b"after", 10);
        assert_eq!(decode(Algorithm::Zstd, &stored), b"after");
    }
}
