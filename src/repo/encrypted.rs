//! An encrypted repository: a [`Repository`] wrapper that stores every object (WAL,
//! backup parts, dumps, manifests, exports, leases) in the format of [`crate::crypto`],
//! under the object's own name, and shows its callers the plaintext: bodies, sizes
//! (see [`crypto::plain_len`]) and metadata, which is sealed into one value as well.
//!
//! `repo.json` alone stays plaintext: it names the keys that wrote the repository (by id,
//! never the key) and how a passphrase is stretched, so that [`wrap`] refuses a wrong or
//! missing key, and a mix of encrypted and plaintext, before any object is read.
//!
//! Errors from a damaged object name it: a flipped byte, a cut, an object moved or
//! replayed under another name, or plaintext where ciphertext belongs all fail
//! authentication (see [`crypto`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::identity::{
    encrypted_without_key, plaintext_with_key, EncryptionInfo, PassphraseKdf, RepoIdentity, CIPHER,
    FORMAT_ENCRYPTED,
};
use super::{
    late_metadata, layout, leftover, BodyReader, GetObject, LateMetadata, ObjectMeta, PutOptions,
    RepoError, RepoResult, Repository, RepositoryExt,
};
use crate::config::{Config, EncryptionConfig};
use crate::crypto::{self, MasterKey, PASSPHRASE_ITERATIONS};

/// The one metadata value of an encrypted object: its real metadata, sealed (hex).
const META_SEALED: &str = "sealed";
const KDF: &str = "pbkdf2-hmac-sha256";
/// Bytes read from the backend at a time when opening an object.
const READ_BUFFER: usize = 256 << 10;

pub struct Encrypted {
    inner: Arc<dyn Repository>,
    /// The key that writes first, then previous ones (read only).
    keys: Arc<[MasterKey]>,
    /// What a new repo.json records.
    info: EncryptionInfo,
    /// What repo.json must say before the first data object is written.
    pending: Pending,
    /// Set once `pending` holds (see [`Encrypted::ensure_recorded`]).
    recorded: tokio::sync::OnceCell<()>,
}

/// What repo.json lacks when the repository is opened. Recording it waits for the first
/// write of a data object, so that reading commands (`wal-fetch`, `list`, a disaster
/// recovery host with read-only credentials) never write.
enum Pending {
    /// repo.json records the key that writes.
    Nothing,
    /// A rotation: the new key's id is added to repo.json.
    Rotation,
    /// A new repository: repo.json must exist, with this encryption, before data objects
    /// (the passphrase salt made here would be lost otherwise).
    New,
}

/// Objects that must stay readable: written only once repo.json records their key.
fn is_data(key: &str) -> bool {
    [
        layout::WAL_PREFIX,
        layout::BACKUPS_PREFIX,
        layout::EXPORTS_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// Where a key comes from, for messages (never the key).
fn source_of(e: &EncryptionConfig) -> String {
    match (&e.key_file, &e.key_env) {
        (Some(f), _) => format!("encryption.key_file {}", f.display()),
        (None, Some(v)) => format!("encryption.key_env ${v}"),
        _ => "no key".into(),
    }
}

/// The bytes of a key: a file that is text loses trailing whitespace (the newline an
/// editor or `openssl rand -base64` adds), binary material is taken as it is.
fn key_bytes_of_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        crate::user_error!(
            "{what} {}: cannot read it ({e}); point it at the repository's key file",
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "{what} {} can be read by other users; chmod 600 it",
                    path.display()
                );
            }
        }
    }
    Ok(trim_text(bytes))
}

fn trim_text(bytes: Vec<u8>) -> Vec<u8> {
    match String::from_utf8(bytes) {
        Ok(s) => s.trim_end().as_bytes().to_vec(),
        Err(e) => e.into_bytes(),
    }
}

fn key_of(
    bytes: Vec<u8>,
    passphrase: bool,
    kdf: Option<&PassphraseKdf>,
    source: &str,
) -> anyhow::Result<MasterKey> {
    let r = if passphrase {
        let kdf = kdf.expect("a passphrase repository has a salt");
        let salt = hex::decode(&kdf.salt).map_err(|_| {
            crate::user_error!("repo.json: the passphrase salt is not hex; was it altered?")
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| crate::user_error!("{source}: a passphrase must be text (UTF-8)"))?;
        stretched(&text, &salt)
    } else {
        MasterKey::from_material(&bytes)
    };
    r.map_err(|e| crate::user_error!("{source}: {e}"))
}

/// The keys the config names: the current one first, then previous ones.
fn load_keys(e: &EncryptionConfig, kdf: Option<&PassphraseKdf>) -> anyhow::Result<Vec<MasterKey>> {
    let source = source_of(e);
    let current = match (&e.key_file, &e.key_env) {
        (Some(f), _) => key_bytes_of_file(f, "encryption.key_file")?,
        (None, Some(var)) => std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| trim_text(v.into_encoded_bytes()))
            .ok_or_else(|| {
                crate::user_error!(
                    "{source} is not set (or empty) in backupctl's environment; set it to the repository's key"
                )
            })?,
        _ => unreachable!("called only with a key configured"),
    };
    let mut keys = vec![key_of(current, e.passphrase, kdf, &source)?];
    for p in &e.previous_key_files {
        let what = format!("encryption.previous_key_files {}", p.display());
        let bytes = key_bytes_of_file(p, "encryption.previous_key_files")?;
        keys.push(key_of(bytes, e.passphrase, kdf, &what)?);
    }
    Ok(keys)
}

/// A passphrase stretched once per process (the daemon opens the repository for every
/// job and metrics poll; PBKDF2 takes a noticeable fraction of a second each time).
fn stretched(passphrase: &str, salt: &[u8]) -> Result<MasterKey, String> {
    use sha2::Digest as _;
    type Cache = std::sync::Mutex<BTreeMap<Vec<u8>, MasterKey>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let tag = sha2::Sha256::new()
        .chain_update((salt.len() as u64).to_le_bytes())
        .chain_update(salt)
        .chain_update(passphrase.as_bytes())
        .finalize()
        .to_vec();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(k) = cache.lock().expect("not poisoned").get(&tag) {
        return Ok(k.clone());
    }
    let key = MasterKey::from_passphrase(passphrase, salt)?;
    cache.lock().expect("not poisoned").insert(tag, key.clone());
    Ok(key)
}

fn new_kdf() -> anyhow::Result<PassphraseKdf> {
    let mut salt = [0; 32];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    Ok(PassphraseKdf {
        kdf: KDF.into(),
        iterations: PASSPHRASE_ITERATIONS,
        salt: hex::encode(salt),
    })
}

/// `repo` as the config's `[encryption]` says: unchanged for a plaintext repository,
/// wrapped in [`Encrypted`] for an encrypted one. Refuses, before any object is read, a
/// key that is not the repository's, an encrypted repository without a key, and a
/// plaintext repository with one. A new key whose previous key is the repository's is
/// a rotation: recorded in repo.json, it writes from now on.
pub async fn wrap(cfg: &Config, repo: Arc<dyn Repository>) -> anyhow::Result<Arc<dyn Repository>> {
    let e = &cfg.encryption;
    let identity = match RepoIdentity::load(&*repo).await {
        Ok(identity) => identity,
        // Without a key, a repo.json that cannot be read is the command's to report (or
        // `check`'s to repair), as before encryption existed.
        Err(_) if !e.enabled() => return Ok(repo),
        Err(err) => return Err(err),
    };
    let recorded = identity.as_ref().and_then(|i| i.encryption.clone());
    if let Some(id) = &identity {
        if crate::repo::identity::format_is_encrypted(id.format) != recorded.is_some() {
            return Err(crate::user_error!(
                "{}/{}: format {} does not match its encryption section; was it altered?",
                repo.describe(),
                layout::REPO_JSON,
                id.format
            ));
        }
    }
    match (e.enabled(), &identity, &recorded) {
        (false, _, None) => return Ok(repo),
        (false, _, Some(info)) => {
            return Err(encrypted_without_key(&repo.describe(), info)
                .context(format!("in {}", cfg.origin())))
        }
        (true, Some(_), None) => return Err(plaintext_with_key(&repo.describe())),
        (true, _, _) => {}
    }
    if let Some(info) = &recorded {
        if info.cipher != CIPHER {
            return Err(crate::user_error!(
                "repository {} uses encryption {:?}, which this backupctl does not know; upgrade backupctl",
                repo.describe(),
                info.cipher
            ));
        }
    }
    let mut kdf = recorded.as_ref().and_then(|i| i.passphrase.clone());
    if e.passphrase && kdf.is_none() {
        kdf = Some(new_kdf()?);
    }
    if let Some(k) = kdf.as_ref().filter(|_| e.passphrase) {
        if k.kdf != KDF || k.iterations != PASSPHRASE_ITERATIONS {
            return Err(crate::user_error!(
                "repository {} stretches passphrases with {} and {} rounds, which this backupctl does not; upgrade backupctl",
                repo.describe(),
                k.kdf,
                k.iterations
            ));
        }
    }
    let keys = load_keys(e, kdf.as_ref())?;
    let current = keys[0].id();
    let (info, pending) = match recorded {
        Some(mut info) => {
            if info.key_ids.contains(&current) {
                if info.key_ids.last() != Some(&current) {
                    tracing::warn!(
                        repository = %repo.describe(),
                        "new objects are written with key {current}, but the repository's newest key is {}: is this config older than a key rotation?",
                        info.key_ids.last().map(String::as_str).unwrap_or("?")
                    );
                }
                (info, Pending::Nothing)
            } else {
                let known = keys[1..].iter().any(|k| info.key_ids.contains(&k.id()));
                if !known {
                    return Err(crate::user_error!(
                        "the key from {} (id {current}) is not a key of repository {} (its keys: {}); \
                         is it the wrong key file? To rotate keys, keep the old one in encryption.previous_key_files",
                        source_of(e),
                        repo.describe(),
                        info.key_ids.join(", ")
                    ));
                }
                info.key_ids.push(current);
                (info, Pending::Rotation)
            }
        }
        None => (
            EncryptionInfo {
                cipher: CIPHER.into(),
                key_ids: vec![current],
                passphrase: kdf.filter(|_| e.passphrase),
            },
            Pending::New,
        ),
    };
    Ok(Arc::new(Encrypted {
        inner: repo,
        keys: keys.into(),
        info,
        pending,
        recorded: tokio::sync::OnceCell::new(),
    }))
}

/// `meta` sealed under `key`'s metadata name, as the one value [`META_SEALED`].
fn seal_meta(
    with: &MasterKey,
    key: &str,
    meta: BTreeMap<String, String>,
) -> RepoResult<BTreeMap<String, String>> {
    if meta.is_empty() {
        return Ok(meta);
    }
    let json = serde_json::to_vec(&meta).expect("string map");
    let sealed = crypto::seal_bytes(with, &meta_name(key), &json)
        .map_err(|e| RepoError::io("encrypt the metadata of", key, e))?;
    Ok(BTreeMap::from([(
        META_SEALED.to_string(),
        hex::encode(sealed),
    )]))
}

fn corrupt(key: &str, why: String) -> RepoError {
    RepoError::io(
        "open",
        key,
        std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    )
}

/// The name an object's metadata is sealed under: never an object's name (no key holds
/// a NUL).
fn meta_name(key: &str) -> String {
    format!("{key}\0metadata")
}

impl Encrypted {
    fn refuse(&self, message: String) -> RepoError {
        RepoError::Remote {
            op: "write to",
            key: layout::REPO_JSON.to_string(),
            message,
            transient: false,
        }
    }

    /// Make sure repo.json records what [`Pending`] says before `key`, a data object,
    /// is written: a rotation is recorded (merged into the repo.json of the moment, so
    /// a concurrent rotation is kept); a new repository must have been initialised
    /// (by `check --init`, a backup or the first WAL segment) with this encryption.
    async fn ensure_recorded(&self, key: &str) -> RepoResult<()> {
        if !is_data(key) {
            return Ok(());
        }
        self.recorded
            .get_or_try_init(|| async {
                if let Pending::Nothing = self.pending {
                    return Ok(());
                }
                let current = self.keys[0].id();
                let loaded = RepoIdentity::load(&*self.inner)
                    .await
                    .map_err(|e| self.refuse(format!("{e:#}")))?;
                let Some(mut id) = loaded else {
                    return Err(self.refuse(format!(
                        "the encrypted repository {} is not initialised: its repo.json, which \
                         records the key, must exist before the first object; run `backupctl check --init` \
                         (or take a backup)",
                        self.inner.describe()
                    )));
                };
                let Some(theirs) = id.encryption.as_mut() else {
                    return Err(self.refuse(format!("{:#}", plaintext_with_key(&self.inner.describe()))));
                };
                if theirs.passphrase.is_some() && theirs.passphrase != self.info.passphrase {
                    return Err(self.refuse(
                        "repo.json was written with another passphrase salt (by another process at the same moment?); run the command again".into(),
                    ));
                }
                if theirs.key_ids.contains(&current) {
                    return Ok(());
                }
                if !matches!(self.pending, Pending::Rotation) {
                    return Err(self.refuse(format!(
                        "repo.json does not record key {current} (its keys: {}); was it initialised \
                         by another process with another key?",
                        theirs.key_ids.join(", ")
                    )));
                }
                theirs.key_ids.push(current.clone());
                if theirs.passphrase.is_none() {
                    theirs.passphrase = self.info.passphrase.clone();
                }
                let body = serde_json::to_vec_pretty(&id).expect("serializable");
                self.inner
                    .put_bytes(layout::REPO_JSON, body, PutOptions::default())
                    .await?;
                tracing::info!(repository = %self.inner.describe(), key = %current, "new encryption key recorded: it writes from now on, the previous keys still read");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    fn plain_size(&self, key: &str, stored: u64) -> RepoResult<u64> {
        crypto::plain_len(stored).ok_or_else(|| {
            corrupt(
                key,
                format!(
                    "{stored} bytes is no size an encrypted object can have: the object was cut short or extended"
                ),
            )
        })
    }

    /// The plaintext metadata of `key`. Anything stored beside the sealed value is
    /// ignored: only what the key authenticates is shown.
    fn open_meta(
        &self,
        key: &str,
        meta: &BTreeMap<String, String>,
    ) -> RepoResult<BTreeMap<String, String>> {
        let Some(sealed) = meta.get(META_SEALED) else {
            return Ok(BTreeMap::new());
        };
        let bytes = hex::decode(sealed)
            .map_err(|_| corrupt(key, "its sealed metadata is not hex".into()))?;
        let json = crypto::open_bytes(&self.keys, &meta_name(key), &bytes)
            .map_err(|e| corrupt(key, format!("its metadata: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| corrupt(key, format!("its metadata is not a string map: {e}")))
    }

    fn open_object_meta(&self, mut meta: ObjectMeta) -> RepoResult<ObjectMeta> {
        meta.size = self.plain_size(&meta.key, meta.size)?;
        meta.metadata = self.open_meta(&meta.key, &meta.metadata)?;
        Ok(meta)
    }

    fn seal_body(&self, key: &str, body: BodyReader) -> RepoResult<BodyReader> {
        let r = crypto::SealReader::new(&self.keys[0], key, body)
            .map_err(|e| RepoError::io("encrypt", key, e))?;
        Ok(Box::new(r))
    }

    /// repo.json is written with this repository's encryption section (and format);
    /// when another process initialised the repository at the same moment with other
    /// parameters (another passphrase salt), the command fails and is run again.
    async fn put_identity(&self, mut body: BodyReader, opts: PutOptions) -> RepoResult<u64> {
        let key = layout::REPO_JSON;
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)
            .await
            .map_err(|e| RepoError::io("read the body of", key, e))?;
        let mut id: RepoIdentity = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::io("parse", key, std::io::Error::other(e)))?;
        // A repository that holds incremental backups keeps saying so; one rewritten
        // (its format raised) keeps the encryption section it has.
        id.format = if id.format >= crate::repo::identity::FORMAT_INCREMENTAL_PLAIN {
            crate::repo::identity::FORMAT_INCREMENTAL_ENCRYPTED
        } else {
            FORMAT_ENCRYPTED
        };
        if id.encryption.is_none() {
            id.encryption = Some(self.info.clone());
        }
        let out = serde_json::to_vec_pretty(&id).expect("serializable");
        match self.inner.put_bytes(key, out, opts).await {
            Err(RepoError::AlreadyExists { key }) => {
                let theirs = RepoIdentity::load(&*self.inner)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|i| i.encryption);
                let same = theirs.is_some_and(|t| {
                    t.passphrase == self.info.passphrase
                        && self.info.key_ids.iter().all(|k| t.key_ids.contains(k))
                });
                if same {
                    Err(RepoError::AlreadyExists { key })
                } else {
                    Err(RepoError::Remote {
                        op: "initialise",
                        key,
                        message: "another backupctl initialised this repository at the same moment with other encryption parameters; run the command again".into(),
                        transient: false,
                    })
                }
            }
            r => r,
        }
    }
}

#[async_trait]
impl Repository for Encrypted {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, body: BodyReader, mut opts: PutOptions) -> RepoResult<u64> {
        if key == layout::REPO_JSON {
            return self.put_identity(body, opts).await;
        }
        self.ensure_recorded(key).await?;
        let body = self.seal_body(key, body)?;
        opts.metadata = seal_meta(&self.keys[0], key, std::mem::take(&mut opts.metadata))?;
        let stored = self.inner.put(key, body, opts).await?;
        self.plain_size(key, stored)
    }

    async fn get(&self, key: &str) -> RepoResult<GetObject> {
        let obj = self.inner.get(key).await?;
        if key == layout::REPO_JSON {
            return Ok(obj);
        }
        let meta = self.open_object_meta(obj.meta)?;
        // The header now, so that a wrong key or plaintext fails at the open, naming the
        // object (its size, checked above, is at least a header's).
        // Large reads from the backend (a local file costs one blocking-pool hop per
        // read), chunks handed to the opener from memory.
        let mut body = tokio::io::BufReader::with_capacity(READ_BUFFER, obj.body);
        let mut header = [0; crypto::HEADER];
        body.read_exact(&mut header)
            .await
            .map_err(|e| RepoError::io("read", key, e))?;
        crypto::ChunkOpener::new(&self.keys, key, &header)
            .map_err(|e| RepoError::io("open", key, e))?;
        let rest = std::io::Cursor::new(header).chain(body);
        Ok(GetObject {
            meta,
            body: Box::new(crypto::OpenReader::new(&self.keys, key, rest)),
            encryption_key: crypto::key_id_of(&header),
        })
    }

    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>> {
        match self.inner.head(key).await? {
            Some(m) if key != layout::REPO_JSON => self.open_object_meta(m).map(Some),
            other => Ok(other),
        }
    }

    async fn list(&self, prefix: &str) -> RepoResult<Vec<ObjectMeta>> {
        let mut all = self.inner.list(prefix).await?;
        for m in &mut all {
            if m.key != layout::REPO_JSON {
                // A size no encrypted object has is shown as stored (a size check
                // against a manifest fails on it); reading it names the damage.
                m.size = crypto::plain_len(m.size).unwrap_or(m.size);
            }
        }
        Ok(all)
    }

    async fn delete(&self, key: &str) -> RepoResult<()> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> RepoResult<()> {
        self.inner.delete_many(keys).await
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> RepoResult<usize> {
        self.inner.cleanup_incomplete(older_than).await
    }

    async fn leftovers(&self, prefix: &str) -> RepoResult<Vec<leftover::Leftover>> {
        self.inner.leftovers(prefix).await
    }

    async fn remove_leftovers(&self, which: &[leftover::Leftover]) -> RepoResult<usize> {
        self.inner.remove_leftovers(which).await
    }

    async fn put_described_after(
        &self,
        key: &str,
        body: BodyReader,
        metadata: LateMetadata,
        if_absent: bool,
    ) -> RepoResult<u64> {
        self.ensure_recorded(key).await?;
        let body = self.seal_body(key, body)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = key.to_string();
        let key_for_meta = self.keys[0].clone();
        tokio::spawn(async move {
            // A failed producer drops `tx`: nothing is stored, as without encryption.
            if let Ok(meta) = late_metadata(&name, metadata).await {
                if let Ok(sealed) = seal_meta(&key_for_meta, &name, meta) {
                    let _ = tx.send(sealed);
                }
            }
        });
        let stored = self
            .inner
            .put_described_after(key, body, rx, if_absent)
            .await?;
        self.plain_size(key, stored)
    }

    async fn sync(&self, key: &str) -> RepoResult<()> {
        self.inner.sync(key).await
    }
}
