//! Encryption at rest: the format of an encrypted repository object, and the streams that
//! write and read it. The AEAD and the key derivations are aws-lc-rs's (the library the
//! TLS stack already compiles); nothing cryptographic is written here.
//!
//! An object is a 64-byte header, then chunks:
//!
//! ```text
//! header: "BKCTLE01" | key id (16) | salt (32, random per object) | chunk size (u32 LE) | 0 (4)
//! chunk:  AES-256-GCM(object key, nonce = counter (u64 BE) | last (1) | 0 (3),
//!                     aad = header, up to chunk-size bytes of plaintext) | tag (16)
//! ```
//!
//! - The object key is HKDF-SHA256 of the master key, with the object's salt and its
//!   **name** in the repository: an object copied or replayed under another name does
//!   not authenticate there. (An older version of an object under its own name does:
//!   catching that rollback is the job of what lists the objects, e.g. a manifest's
//!   checksums.)
//! - The counter in the nonce detects reordered or repeated chunks; the last chunk (which
//!   may be empty) carries the `last` flag, so an object cut at a chunk boundary, or with
//!   chunks appended, is detected; the header is authenticated with every chunk.
//! - The key id (HKDF of the master key) names the key an object needs without revealing
//!   it, so a wrong or missing key is refused before any chunk is read, and old objects
//!   stay readable with a previous key during a rotation.
//! - Memory: one chunk (64 KiB) per stream.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{hkdf, pbkdf2};

use tokio::io::{AsyncRead, ReadBuf};

const MAGIC: &[u8; 8] = b"BKCTLE01";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
pub const HEADER: usize = 64;
/// PBKDF2-HMAC-SHA256 iterations for a passphrase (OWASP's 2023 figure).
pub const PASSPHRASE_ITERATIONS: u32 = 600_000;

/// The repository's master key (never stored), and its public identifier.
#[derive(Clone)]
pub struct MasterKey {
    secret: [u8; 32],
    id: [u8; 16],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_into(salt: &[u8], secret: &[u8], info: &[&[u8]], out: &mut [u8]) {
    expand_into(
        &hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret),
        info,
        out,
    );
}

fn expand_into(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of at most 32 bytes");
}

/// The one extraction every key of a master key is expanded from, each with its own
/// label.
fn master_prk(secret: &[u8; 32]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, b"backupctl v1").extract(secret)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl MasterKey {
    /// From key material (a key file's bytes): at least 32 bytes of randomness.
    pub fn from_material(material: &[u8]) -> Result<MasterKey, String> {
        if material.len() < 32 {
            return Err(format!(
                "the key is {} bytes; it needs at least 32 random bytes \
                 (e.g. `head -c 32 /dev/urandom > backupctl.key`), or use a passphrase",
                material.len()
            ));
        }
        let mut secret = [0; 32];
        hkdf_into(
            b"backupctl master key v1",
            material,
            &[b"key material"],
            &mut secret,
        );
        Ok(Self::with_secret(secret))
    }

    /// From a passphrase, stretched with PBKDF2-HMAC-SHA256 over `salt` (random, kept
    /// with the repository) and [`PASSPHRASE_ITERATIONS`].
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Result<MasterKey, String> {
        if passphrase.chars().count() < 12 {
            return Err(
                "the passphrase is shorter than 12 characters; use a longer one, or a key file of 32 random bytes"
                    .into(),
            );
        }
        if salt.len() < 16 {
            return Err("the passphrase salt must be at least 16 bytes".into());
        }
        let mut secret = [0; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(PASSPHRASE_ITERATIONS).expect("non-zero"),
            salt,
            passphrase.as_bytes(),
            &mut secret,
        );
        Ok(Self::with_secret(secret))
    }

    fn with_secret(secret: [u8; 32]) -> MasterKey {
        let mut id = [0; 16];
        expand_into(&master_prk(&secret), &[b"key id"], &mut id);
        MasterKey { secret, id }
    }

    /// The key's identifier (hex): what an encrypted object and the repository record.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    fn object_key(&self, salt: &[u8], name: &str) -> LessSafeKey {
        let mut key = [0; 32];
        // Fixed-length fields first, the name last: the info cannot be read two ways.
        expand_into(
            &master_prk(&self.secret),
            &[b"object\0", salt, name.as_bytes()],
            &mut key,
        );
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte AES-256 key"))
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0; aead::NONCE_LEN];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[8] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Seals the chunks of one object in order (the header first).
pub struct ChunkSealer {
    key: LessSafeKey,
    header: [u8; HEADER],
    counter: u64,
    finished: bool,
}

impl ChunkSealer {
    /// Start object `name`, encrypted with `key` under a new random salt.
    pub fn new(key: &MasterKey, name: &str) -> io::Result<ChunkSealer> {
        let mut salt = [0; 32];
        aws_lc_rs::rand::fill(&mut salt)
            .map_err(|_| io::Error::other("no randomness for a salt"))?;
        let mut header = [0; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&key.id);
        header[24..56].copy_from_slice(&salt);
        header[56..60].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        Ok(ChunkSealer {
            key: key.object_key(&salt, name),
            header,
            counter: 0,
            finished: false,
        })
    }

    pub fn header(&self) -> &[u8; HEADER] {
        &self.header
    }

    /// Encrypt `buf` (at most [`CHUNK`] bytes; less only for the last chunk) in place
    /// and append its tag. Each chunk is sealed once, under the next counter: there is
    /// no way to seal the same counter twice, or anything after the last chunk.
    pub fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> io::Result<()> {
        assert!(
            buf.len() == CHUNK || (last && buf.len() < CHUNK),
            "a chunk is full unless it is the last"
        );
        if self.finished {
            return Err(io::Error::other(
                "the encrypted object already has its last chunk",
            ));
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter, last), Aad::from(&self.header[..]), buf)
            .map_err(|_| io::Error::other("AES-256-GCM sealing failed"))?;
        buf.extend_from_slice(tag.as_ref());
        self.counter += 1;
        self.finished = last;
        Ok(())
    }
}

/// The key id an object needs, from its first bytes; `None` if they are not an
/// encrypted object's header.
pub fn key_id_of(header: &[u8]) -> Option<String> {
    (header.len() >= HEADER && &header[..8] == MAGIC).then(|| hex::encode(&header[8..24]))
}

/// Opens the chunks of one object in order, checking each.
pub struct ChunkOpener {
    key: LessSafeKey,
    header: [u8; HEADER],
    name: String,
    counter: u64,
    finished: bool,
}

impl ChunkOpener {
    /// Read the `header` of object `name` and pick whichever of `keys` wrote it (the
    /// current key first, then previous ones during a rotation).
    pub fn new(keys: &[MasterKey], name: &str, header: &[u8]) -> io::Result<ChunkOpener> {
        let id = key_id_of(header).ok_or_else(|| {
            invalid(format!(
                "object {name} is not encrypted (no backupctl encryption header); an encrypted \
                 repository never holds plaintext objects: was it written by another tool, cut short or altered?"
            ))
        })?;
        let key = keys.iter().find(|k| k.id() == id).ok_or_else(|| {
            let known: Vec<String> = keys.iter().map(MasterKey::id).collect();
            invalid(format!(
                "object {name} was encrypted with key {id}, which is not among the configured keys \
                 ({}): add its key file to encryption.previous_key_files",
                known.join(", ")
            ))
        })?;
        let chunk = u32::from_le_bytes(header[56..60].try_into().expect("4 bytes")) as usize;
        if chunk != CHUNK || header[60..HEADER] != [0; 4] {
            return Err(invalid(format!(
                "object {name}: unknown encryption parameters (chunk size {chunk}); written by a newer backupctl?"
            )));
        }
        let mut h = [0; HEADER];
        h.copy_from_slice(&header[..HEADER]);
        Ok(ChunkOpener {
            key: key.object_key(&header[24..56], name),
            header: h,
            name: name.to_string(),
            counter: 0,
            finished: false,
        })
    }

    fn failed(&self, what: &str) -> io::Error {
        invalid(format!(
            "object {}: {what} at chunk {}: the object was altered, truncated, reordered or \
             stored under another name",
            self.name, self.counter
        ))
    }

    /// Check and decrypt one sealed chunk in place (`buf` keeps the plaintext). `last`
    /// is what the stream says: the object ends after this chunk.
    pub fn open(&mut self, buf: &mut Vec<u8>, last: bool) -> io::Result<()> {
        if self.finished {
            return Err(self.failed("data after the last chunk"));
        }
        if buf.len() < TAG {
            return Err(self.failed("the object ends before its last chunk"));
        }
        match self
            .key
            .open_in_place(nonce(self.counter, last), Aad::from(&self.header[..]), buf)
        {
            Ok(plain) => {
                let len = plain.len();
                buf.truncate(len);
                self.counter += 1;
                self.finished = last;
                Ok(())
            }
            // No second try to say more: that would need a copy of every chunk.
            Err(_) => Err(self.failed(if last {
                "authentication failed (or the object was cut short)"
            } else {
                "authentication failed (or data follows the last chunk)"
            })),
        }
    }

    /// Fail unless the last chunk has been opened.
    pub fn finish(&self) -> io::Result<()> {
        if self.finished {
            Ok(())
        } else {
            Err(self.failed("the object ends before its last chunk"))
        }
    }
}

/// The stored size of an object of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER as u64 + plain + chunks * TAG as u64
}

/// The plaintext size of a stored object of `sealed` bytes; `None` when no object
/// [`ChunkSealer`] writes has that size (the object was cut or extended).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER as u64)?;
    let full = (CHUNK + TAG) as u64;
    let chunks = body.div_ceil(full).max(1);
    let plain = body.checked_sub(chunks * TAG as u64)?;
    (sealed_len(plain) == sealed).then_some(plain)
}

/// Encrypt a small in-memory object.
pub fn seal_bytes(key: &MasterKey, name: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut sealer = ChunkSealer::new(key, name)?;
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
    out.extend_from_slice(sealer.header());
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(CHUNK).collect()
    };
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut buf = piece.to_vec();
        sealer.seal(&mut buf, i + 1 == n)?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Decrypt and check a small in-memory object.
pub fn open_bytes(keys: &[MasterKey], name: &str, sealed: &[u8]) -> io::Result<Vec<u8>> {
    let mut opener = ChunkOpener::new(keys, name, sealed)?;
    let body = &sealed[HEADER..];
    let mut out = Vec::with_capacity(body.len());
    let pieces: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(CHUNK + TAG).collect()
    };
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut buf = piece.to_vec();
        opener.open(&mut buf, i + 1 == n)?;
        out.extend_from_slice(&buf);
    }
    opener.finish()?;
    Ok(out)
}

/// Fill `buf[*filled..]` from `inner` until it is full or the stream ends; `Ok(true)` at
/// the end of the stream.
fn poll_fill<R: AsyncRead + Unpin>(
    inner: &mut R,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    filled: &mut usize,
) -> Poll<io::Result<bool>> {
    while *filled < buf.len() {
        let mut rb = ReadBuf::new(&mut buf[*filled..]);
        ready!(Pin::new(&mut *inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(true));
        }
        *filled += n;
    }
    Poll::Ready(Ok(false))
}

/// What a stream has produced and not handed out yet, and how it ended.
#[derive(Default)]
struct Staged {
    out: Vec<u8>,
    pos: usize,
    done: bool,
    /// An error ends the stream: a chunk half produced cannot be resumed.
    broken: Option<String>,
}

impl Staged {
    fn new(out: Vec<u8>) -> Staged {
        Staged {
            out,
            ..Default::default()
        }
    }

    /// `poll_read` of a stream that produces one chunk at a time with `step`: fills as
    /// much of `buf` as is ready (not one chunk per call: a caller reading in large
    /// blocks gets them). An error comes after what was produced before it, and stays
    /// (`again` makes it anew for later calls).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        again: fn(String) -> io::Error,
        mut step: impl FnMut(&mut Staged, &mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        loop {
            let n = (self.out.len() - self.pos).min(buf.remaining());
            buf.put_slice(&self.out[self.pos..self.pos + n]);
            self.pos += n;
            let progressed = buf.filled().len() > start;
            if self.pos < self.out.len() || self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &self.broken {
                return Poll::Ready(if progressed {
                    Ok(())
                } else {
                    Err(again(e.clone()))
                });
            }
            match step(self, cx) {
                Poll::Pending if progressed => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    // Nothing of a chunk that failed is handed out.
                    self.out.clear();
                    self.pos = 0;
                    self.broken = Some(e.to_string());
                    return Poll::Ready(if progressed { Ok(()) } else { Err(e) });
                }
            }
        }
    }
}

/// Reads the encrypted form of the plaintext `inner` gives. Memory: two chunks.
pub struct SealReader<R> {
    inner: R,
    sealer: ChunkSealer,
    /// Plaintext read ahead: a full chunk plus one byte, which tells a full chunk that
    /// is the last from one that is not.
    plain: Vec<u8>,
    filled: usize,
    staged: Staged,
}

impl<R: AsyncRead + Unpin> SealReader<R> {
    pub fn new(key: &MasterKey, name: &str, inner: R) -> io::Result<SealReader<R>> {
        let sealer = ChunkSealer::new(key, name)?;
        let staged = Staged::new(sealer.header().to_vec());
        Ok(SealReader {
            inner,
            sealer,
            plain: vec![0; CHUNK + 1],
            filled: 0,
            staged,
        })
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SealReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (inner, plain, filled, sealer) = (
            &mut this.inner,
            &mut this.plain,
            &mut this.filled,
            &mut this.sealer,
        );
        this.staged.poll(cx, buf, io::Error::other, |staged, cx| {
            let eof = ready!(poll_fill(inner, cx, plain, filled))?;
            let take = if eof { *filled } else { CHUNK };
            staged.out.clear();
            staged.out.extend_from_slice(&plain[..take]);
            staged.pos = 0;
            sealer.seal(&mut staged.out, eof)?;
            plain.copy_within(take..*filled, 0);
            *filled -= take;
            staged.done = eof;
            Poll::Ready(Ok(()))
        })
    }
}

/// Reads the plaintext of the encrypted object `inner` gives, checking every chunk; an
/// error (naming the object) ends the stream. Memory: two chunks.
pub struct OpenReader<R> {
    inner: R,
    keys: Vec<MasterKey>,
    name: String,
    opener: Option<ChunkOpener>,
    /// Sealed bytes read ahead: a full sealed chunk plus one byte (see [`SealReader`]).
    sealed: Vec<u8>,
    filled: usize,
    staged: Staged,
}

impl<R: AsyncRead + Unpin> OpenReader<R> {
    pub fn new(keys: &[MasterKey], name: &str, inner: R) -> OpenReader<R> {
        OpenReader {
            inner,
            keys: keys.to_vec(),
            name: name.to_string(),
            opener: None,
            sealed: vec![0; CHUNK + TAG + 1],
            filled: 0,
            staged: Staged::new(Vec::with_capacity(CHUNK + TAG)),
        }
    }

    /// Open the next chunk into `staged`.
    fn step(&mut self, staged: &mut Staged, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.opener.is_none() {
            let mut want = HEADER;
            let eof = ready!(poll_fill(
                &mut self.inner,
                cx,
                &mut self.sealed[..want],
                &mut self.filled
            ))?;
            if eof {
                want = self.filled;
            }
            let opener = ChunkOpener::new(&self.keys, &self.name, &self.sealed[..want])?;
            self.opener = Some(opener);
            self.filled = 0;
        }
        let eof = ready!(poll_fill(
            &mut self.inner,
            cx,
            &mut self.sealed,
            &mut self.filled
        ))?;
        let take = if eof { self.filled } else { CHUNK + TAG };
        staged.out.clear();
        staged.out.extend_from_slice(&self.sealed[..take]);
        staged.pos = 0;
        let opener = self.opener.as_mut().expect("set above");
        opener.open(&mut staged.out, eof)?;
        self.sealed.copy_within(take..self.filled, 0);
        self.filled -= take;
        staged.done = eof;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OpenReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut staged = std::mem::take(&mut this.staged);
        let r = staged.poll(cx, buf, invalid, |staged, cx| this.step(staged, cx));
        this.staged = staged;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_material(&[byte; 32]).unwrap()
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A source that hands out at most `step` bytes per read, crossing chunk boundaries.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// Sealed through the stream, checked against the in-memory form's length.
    fn sealed(k: &MasterKey, name: &str, data: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = vec![];
        let src = Trickle { data, step: 7919 };
        block_on(SealReader::new(k, name, src).unwrap().read_to_end(&mut out)).unwrap();
        assert_eq!(out.len(), seal_bytes(k, name, data).unwrap().len());
        assert_eq!(plain_len(out.len() as u64), Some(data.len() as u64));
        out
    }

    /// Opened through the stream and in memory: both must agree.
    fn opened(keys: &[MasterKey], name: &str, bytes: &[u8]) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut out = vec![];
        let src = Trickle {
            data: bytes,
            step: 5003,
        };
        let streamed = block_on(OpenReader::new(keys, name, src).read_to_end(&mut out));
        let whole = open_bytes(keys, name, bytes);
        match (streamed, whole) {
            (Ok(_), Ok(w)) => {
                assert_eq!(out, w);
                Ok(out)
            }
            (Err(a), Err(_)) => Err(a),
            (a, b) => panic!("stream {a:?} and memory {b:?} disagree"),
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_size_round_trips_and_hides_the_plaintext() {
        let k = key(1);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain = data(len);
            let enc = sealed(&k, "wal/x", &plain);
            // The last chunk is the last data, or empty for an empty object.
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(enc.len(), HEADER + len + chunks * TAG, "length {len}");
            assert_eq!(
                opened(std::slice::from_ref(&k), "wal/x", &enc).unwrap(),
                plain,
                "length {len}"
            );
        }
        let marker = b"MARKER-1234567890-MARKER".repeat(100);
        let enc = sealed(&k, "o", &marker);
        assert!(!enc.windows(24).any(|w| w == &marker[..24]));
    }

    #[test]
    fn a_changed_byte_a_cut_a_reorder_or_another_name_is_refused_naming_the_object() {
        let k = key(2);
        let plain = data(3 * CHUNK + 100);
        let enc = sealed(&k, "backups/b1/base.0.tar", &plain);
        let refused = |bytes: &[u8], name: &str, what: &str| {
            let err = opened(std::slice::from_ref(&k), name, bytes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{what}: {err}");
        };
        for at in [
            HEADER - 10,
            HEADER + 5,
            HEADER + CHUNK + TAG + 1,
            enc.len() - 1,
        ] {
            let mut bad = enc.clone();
            bad[at] ^= 1;
            refused(&bad, "backups/b1/base.0.tar", "flipped byte");
        }
        // Cut at a chunk boundary (the last chunk missing), inside a chunk, or extended.
        refused(
            &enc[..HEADER + 3 * (CHUNK + TAG)],
            "backups/b1/base.0.tar",
            "cut at a boundary",
        );
        refused(&enc[..enc.len() - 7], "backups/b1/base.0.tar", "cut");
        refused(&enc[..HEADER], "backups/b1/base.0.tar", "header only");
        let mut longer = enc.clone();
        longer.extend_from_slice(&enc[HEADER..HEADER + 50]);
        refused(&longer, "backups/b1/base.0.tar", "appended");
        // Two chunks swapped.
        let c = CHUNK + TAG;
        let mut swapped = enc[..HEADER].to_vec();
        swapped.extend_from_slice(&enc[HEADER + c..HEADER + 2 * c]);
        swapped.extend_from_slice(&enc[HEADER..HEADER + c]);
        swapped.extend_from_slice(&enc[HEADER + 2 * c..]);
        refused(&swapped, "backups/b1/base.0.tar", "reordered");
        // The same bytes under another name (two objects swapped, or an old one replayed).
        refused(&enc, "backups/b2/base.0.tar", "renamed");
        // Plaintext where an encrypted object belongs.
        let err = opened(std::slice::from_ref(&k), "wal/y", &plain)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wal/y") && err.contains("not encrypted"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_key_is_refused_by_its_id_and_previous_keys_still_open_old_objects() {
        let (old, new) = (key(3), key(4));
        assert_ne!(old.id(), new.id());
        let enc = sealed(&old, "manifest", b"{}");
        let err = opened(std::slice::from_ref(&new), "manifest", &enc)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&old.id()) && err.contains(&new.id()), "{err}");
        assert_eq!(key_id_of(&enc).unwrap(), old.id());
        // Rotation: the new key writes, the old one still reads what it wrote.
        assert_eq!(
            opened(&[new.clone(), old.clone()], "manifest", &enc).unwrap(),
            b"{}"
        );
        let enc2 = sealed(&new, "manifest2", b"[]");
        assert_eq!(opened(&[new, old], "manifest2", &enc2).unwrap(), b"[]");
    }

    /// A source that fails once, after `ok` bytes.
    struct FailsOnce {
        ok: usize,
        failed: bool,
    }

    impl AsyncRead for FailsOnce {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.failed && self.ok == 0 {
                self.failed = true;
                return Poll::Ready(Err(io::Error::other("disk error")));
            }
            let n = self.ok.min(buf.remaining()).min(1000);
            buf.put_slice(&vec![7; n]);
            self.ok -= n;
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn after_a_failed_read_nothing_more_is_sealed() {
        use tokio::io::AsyncReadExt;
        let k = key(5);
        let src = FailsOnce {
            ok: CHUNK + 10,
            failed: false,
        };
        let mut r = SealReader::new(&k, "o", src).unwrap();
        let mut out = vec![];
        assert!(block_on(r.read_to_end(&mut out)).is_err());
        // Reading on must not seal anything more (nor end the object as if complete).
        let mut more = vec![];
        assert!(block_on(r.read_to_end(&mut more)).is_err());
        assert!(open_bytes(&[k], "o", &out).is_err());
    }

    #[test]
    fn sizes_translate_both_ways_and_impossible_sizes_are_refused() {
        for p in [
            0,
            1,
            100,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            10 * CHUNK as u64,
        ] {
            assert_eq!(plain_len(sealed_len(p)), Some(p), "{p}");
        }
        for c in [
            0,
            63,
            64,
            65,
            79,
            (HEADER + CHUNK + TAG + 1) as u64,
            (HEADER + CHUNK + TAG + 16) as u64,
        ] {
            assert_eq!(plain_len(c), None, "{c}");
        }
    }

    #[test]
    fn keys_come_from_enough_material_or_a_long_passphrase() {
        assert!(MasterKey::from_material(&[7; 31])
            .unwrap_err()
            .contains("32 random bytes"));
        assert!(MasterKey::from_passphrase("short", &[0; 16]).is_err());
        let salt = [9; 16];
        let a = MasterKey::from_passphrase("correct horse battery", &salt).unwrap();
        let b = MasterKey::from_passphrase("correct horse battery", &salt).unwrap();
        let c = MasterKey::from_passphrase("correct horse battery", &[8; 16]).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert!(!format!("{a:?}").contains("secret"));
    }
}
