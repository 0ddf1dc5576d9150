//! Copying objects from one repository to another (several repositories: a backup
//! copied to the others that receive its kind, WAL catching up from another
//! repository). The bytes are streamed, never held whole, and checked against the
//! digest the object's metadata (or its manifest) records before the copy is stored:
//! a damaged source fails the copy instead of spreading.

use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::{layout, PutOptions, RepoError, RepoResult, Repository};
use crate::codec::Digest;

/// Before copying into `dst`: its `repo.json` must name the cluster `src`'s names (and
/// agree on encryption); a new `dst` gets one written from `src`'s.
pub async fn ensure_same_cluster(
    src: &dyn Repository,
    dst: &dyn Repository,
    encrypted: bool,
) -> anyhow::Result<()> {
    let Some(id) = super::identity::RepoIdentity::load(src).await? else {
        anyhow::bail!(
            "{} has no repo.json: nothing says which cluster its data belongs to",
            src.describe()
        );
    };
    super::identity::RepoIdentity::ensure(
        dst,
        id.system_identifier(),
        id.pg_major,
        id.wal_segment_size,
        encrypted,
    )
    .await?;
    Ok(())
}

/// Copy `key` from `src` to `dst` with its metadata, checking its bytes against
/// `expected` (or the digest its metadata records; unchecked when neither says). An
/// identical object already in `dst` is kept; a different one is an error when
/// `if_absent` (WAL: never replaced), else replaced. Returns the bytes copied.
pub async fn copy_object(
    src: &dyn Repository,
    dst: &dyn Repository,
    key: &str,
    expected: Option<Digest>,
    if_absent: bool,
) -> RepoResult<u64> {
    let obj = src.get(key).await?;
    let expected = expected.or_else(|| layout::stored_digest(&obj.meta.metadata));
    let body = Verifying {
        inner: obj.body,
        key: key.to_string(),
        expected: expected.clone(),
        hash: Sha256::new(),
        size: 0,
    };
    let opts = PutOptions {
        metadata: obj.meta.metadata.clone(),
        if_absent,
    };
    match dst.put(key, Box::new(body), opts).await {
        Err(RepoError::AlreadyExists { .. }) => {
            let there = dst.head(key).await?;
            let same = match (&there, &expected) {
                (Some(t), Some(e)) => layout::stored_digest(&t.metadata).as_ref() == Some(e),
                _ => false,
            };
            if same {
                Ok(0)
            } else {
                Err(RepoError::Remote {
                    op: "copy",
                    key: key.to_string(),
                    message: format!(
                        "{} already holds a different object under this name; it is left as it is",
                        dst.describe()
                    ),
                    transient: false,
                })
            }
        }
        other => other,
    }
}

/// A body that fails at its end, before the put can complete, when its bytes do not
/// match the digest expected.
struct Verifying {
    inner: super::BodyReader,
    key: String,
    expected: Option<Digest>,
    hash: Sha256,
    size: u64,
}

impl AsyncRead for Verifying {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.hash.update(new);
                    this.size += new.len() as u64;
                    return Poll::Ready(Ok(()));
                }
                if let Some(e) = &this.expected {
                    let got = hex::encode(this.hash.clone().finalize());
                    if got != e.sha256 || this.size != e.size {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{} is damaged in the repository it is copied from: {} bytes with SHA-256 {got}, expected {} bytes with {}",
                                this.key, this.size, e.size, e.sha256
                            ),
                        )));
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::local::LocalRepository;
    use crate::repo::RepositoryExt;
    use std::collections::BTreeMap;

    fn meta_for(bytes: &[u8]) -> BTreeMap<String, String> {
        let d = Digest::of(bytes);
        BTreeMap::from([
            (layout::META_SHA256.to_string(), d.sha256),
            (layout::META_SIZE.to_string(), d.size.to_string()),
        ])
    }

    #[tokio::test]
    async fn copies_with_metadata_and_refuses_a_damaged_source() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (
            LocalRepository::new(a.path().to_path_buf()),
            LocalRepository::new(b.path().to_path_buf()),
        );
        let opts = |m| PutOptions {
            metadata: m,
            if_absent: false,
        };
        src.put_bytes("k", b"hello".to_vec(), opts(meta_for(b"hello")))
            .await
            .unwrap();
        assert_eq!(copy_object(&src, &dst, "k", None, true).await.unwrap(), 5);
        assert_eq!(dst.get_bytes("k").await.unwrap(), b"hello");
        let head = dst.head("k").await.unwrap().unwrap();
        assert_eq!(head.metadata, meta_for(b"hello"));
        // Again: identical, kept.
        assert_eq!(copy_object(&src, &dst, "k", None, true).await.unwrap(), 0);

        // A source whose bytes no longer match their digest is not copied.
        src.put_bytes("bad", b"hellO".to_vec(), opts(meta_for(b"hello")))
            .await
            .unwrap();
        let err = copy_object(&src, &dst, "bad", None, true)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("damaged") || err.to_string().contains("bad"));
        assert!(dst.head("bad").await.unwrap().is_none());

        // A different object already there under the name is left alone.
        src.put_bytes("k2", b"one".to_vec(), opts(meta_for(b"one")))
            .await
            .unwrap();
        dst.put_bytes("k2", b"two".to_vec(), opts(meta_for(b"two")))
            .await
            .unwrap();
        assert!(copy_object(&src, &dst, "k2", None, true).await.is_err());
        assert_eq!(dst.get_bytes("k2").await.unwrap(), b"two");
    }
}
