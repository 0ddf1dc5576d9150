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
use std::io::{self, Read, Write};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{hkdf, pbkdf2};

use crate::transfer::read_full;

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

/// Writes the encrypted form of what is written to it into `out`; [`Sealer::finish`]
/// writes the last chunk (an object without it does not open).
pub struct Sealer<W: Write> {
    out: W,
    key: LessSafeKey,
    header: [u8; HEADER],
    buf: Vec<u8>,
    counter: u64,
    /// Set while a chunk is sealed in `buf` and not yet written: after a failed write,
    /// sealing `buf` again with the same nonce would undo the encryption, so every later
    /// call is refused.
    poisoned: bool,
}

/// Start writing object `name`, encrypted with `key`, into `out`.
pub fn seal<W: Write>(key: &MasterKey, name: &str, mut out: W) -> io::Result<Sealer<W>> {
    let mut salt = [0; 32];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| io::Error::other("no randomness for a salt"))?;
    let mut header = [0; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(&key.id);
    header[24..56].copy_from_slice(&salt);
    header[56..60].copy_from_slice(&(CHUNK as u32).to_le_bytes());
    out.write_all(&header)?;
    Ok(Sealer {
        out,
        key: key.object_key(&salt, name),
        header,
        buf: Vec::with_capacity(CHUNK + TAG),
        counter: 0,
        poisoned: false,
    })
}

impl<W: Write> Sealer<W> {
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier write of this encrypted object failed; start the object again",
            ));
        }
        self.poisoned = true;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::from(&self.header[..]),
                &mut self.buf,
            )
            .map_err(|_| io::Error::other("AES-256-GCM sealing failed"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(tag.as_ref())?;
        self.buf.clear();
        self.counter += 1;
        self.poisoned = false;
        Ok(())
    }

    /// Write the last chunk and hand `out` back.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier write of this encrypted object failed; start the object again",
            ));
        }
        let n = data.len();
        while !data.is_empty() {
            // A full chunk is sealed only once more data comes: the last one is
            // finish()'s, with the flag.
            if self.buf.len() == CHUNK {
                self.seal_chunk(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The key id an object needs, from its first bytes; `None` if they are not an
/// encrypted object's header.
pub fn key_id_of(header: &[u8]) -> Option<String> {
    (header.len() >= HEADER && &header[..8] == MAGIC).then(|| hex::encode(&header[8..24]))
}

/// Reads the plaintext of an encrypted object, checking every chunk.
pub struct Opener<R: Read> {
    inp: R,
    key: LessSafeKey,
    header: [u8; HEADER],
    name: String,
    buf: Vec<u8>,
    plain: std::ops::Range<usize>,
    counter: u64,
    done: bool,
    /// An error ends the stream: a chunk half read cannot be resumed.
    broken: bool,
}

/// Start reading object `name` from `inp` with whichever of `keys` it was written with
/// (the current key first, then previous ones during a rotation).
pub fn open<R: Read>(keys: &[MasterKey], name: &str, mut inp: R) -> io::Result<Opener<R>> {
    let mut header = [0; HEADER];
    let got = read_full(&mut inp, &mut header)?;
    let id = key_id_of(&header[..got]).ok_or_else(|| {
        invalid(format!(
            "object {name} is not encrypted (no backupctl encryption header); an encrypted \
             repository never holds plaintext objects: was it written by another tool or altered?"
        ))
    })?;
    let key = keys.iter().find(|k| k.id() == id).ok_or_else(|| {
        let known: Vec<String> = keys.iter().map(MasterKey::id).collect();
        invalid(format!(
            "object {name} was encrypted with key {id}, which is not among the configured keys \
             ({}): add it to the previous keys",
            known.join(", ")
        ))
    })?;
    let chunk = u32::from_le_bytes(header[56..60].try_into().expect("4 bytes")) as usize;
    if chunk != CHUNK || header[60..] != [0; 4] {
        return Err(invalid(format!(
            "object {name}: unknown encryption parameters (chunk size {chunk}); written by a newer backupctl?"
        )));
    }
    Ok(Opener {
        inp,
        key: key.object_key(&header[24..56], name),
        header,
        name: name.to_string(),
        buf: vec![0; CHUNK + TAG],
        plain: 0..0,
        counter: 0,
        done: false,
        broken: false,
    })
}

impl<R: Read> Opener<R> {
    fn failed(&self, what: &str) -> io::Error {
        invalid(format!(
            "object {}: {what} at chunk {}: the object was altered, truncated, reordered or \
             stored under another name",
            self.name, self.counter
        ))
    }

    /// Decrypt the next chunk into `buf`.
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut sealed = std::mem::take(&mut self.buf);
        sealed.resize(CHUNK + TAG, 0);
        let n = read_full(&mut self.inp, &mut sealed)?;
        if n < TAG {
            self.buf = sealed;
            return Err(self.failed("the object ends before its last chunk"));
        }
        // A short chunk can only be the last; a full one is the last only if it says so.
        let candidates: &[bool] = if n < CHUNK + TAG {
            &[true]
        } else {
            &[false, true]
        };
        let mut opened = None;
        for &last in candidates {
            let mut attempt = sealed[..n].to_vec();
            if let Ok(plain) = self.key.open_in_place(
                nonce(self.counter, last),
                Aad::from(&self.header[..]),
                &mut attempt,
            ) {
                let len = plain.len();
                opened = Some((attempt, len, last));
                break;
            }
        }
        let Some((plain, len, last)) = opened else {
            self.buf = sealed;
            return Err(self.failed("authentication failed"));
        };
        if last {
            let mut more = [0; 1];
            if read_full(&mut self.inp, &mut more)? != 0 {
                self.buf = plain;
                return Err(self.failed("data after the last chunk"));
            }
            self.done = true;
        }
        self.counter += 1;
        self.buf = plain;
        self.plain = 0..len;
        Ok(())
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.plain.is_empty() {
            if self.done {
                return Ok(0);
            }
            if self.broken {
                return Err(self.failed("reading after an error"));
            }
            if let Err(e) = self.next_chunk() {
                self.broken = true;
                return Err(e);
            }
        }
        let n = self.plain.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_material(&[byte; 32]).unwrap()
    }

    fn sealed(k: &MasterKey, name: &str, data: &[u8]) -> Vec<u8> {
        let mut s = seal(k, name, Vec::new()).unwrap();
        // Odd write sizes cross chunk boundaries.
        for piece in data.chunks(7919) {
            s.write_all(piece).unwrap();
        }
        s.finish().unwrap()
    }

    fn opened(keys: &[MasterKey], name: &str, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = vec![];
        open(keys, name, bytes)?.read_to_end(&mut out)?;
        Ok(out)
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

    /// A writer that fails once, after `ok` bytes.
    struct FailsOnce {
        out: Vec<u8>,
        ok: usize,
        failed: bool,
    }

    impl Write for FailsOnce {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if !self.failed && self.out.len() + b.len() > self.ok {
                self.failed = true;
                return Err(io::Error::other("disk full"));
            }
            self.out.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_write_nothing_more_is_written() {
        let k = key(5);
        let out = FailsOnce {
            out: vec![],
            ok: HEADER + 10,
            failed: false,
        };
        let mut s = seal(&k, "o", out).unwrap();
        let plain = data(2 * CHUNK);
        assert!(s.write_all(&plain).is_err());
        // Retrying must not seal the same chunk again (that would write plaintext).
        assert!(s.write_all(&plain[..10]).is_err());
        assert!(s.finish().is_err());
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
