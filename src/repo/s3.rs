//! S3 repository (aws-sdk-s3; AWS or any S3-compatible server).
//!
//! Small bodies go up in one PutObject. Larger ones use a multipart upload with fixed-size
//! parts, at most `upload_concurrency` parts in flight, so memory is bounded by
//! `part size × (in-flight + 1)`; the part size doubles every 1,000 parts to stay under
//! S3's 10,000-part limit for unbounded streams. Any error, and dropping the upload
//! future (cancellation), aborts the multipart upload so nothing partial becomes visible.
//!
//! The SDK's own retry is disabled: every request goes through [`super::retry`], which
//! retries transient failures (5xx, throttling, timeouts, connection errors) with jittered
//! backoff and fails permanent ones (403, 404, 400…) at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::{
    retry, BodyReader, GetObject, ObjectMeta, PutOptions, RepoError, RepoResult, Repository,
    ATTEMPTS,
};
use crate::config::RepositoryConfig;

mod ranged;

/// The first request asks for this much, streamed as it comes: an object no larger (a
/// WAL segment) takes one request, as each further one costs a round trip, and a new
/// connection's handshakes besides.
const FIRST_RANGE: u64 = 16 << 20;
/// Size of the ranges the rest of a larger object is downloaded in.
const RANGE_SIZE: u64 = 4 << 20;
/// Ranges in flight ahead of the one being read: with the one being read, a download
/// holds at most `RANGE_SIZE × (RANGES_AHEAD + 1)` (12 MiB; a restore runs one download
/// per worker).
const RANGES_AHEAD: usize = 2;

pub struct S3Repository {
    client: Client,
    bucket: String,
    /// Key prefix ending in `/`: `<prefix>/<cluster>/`.
    root: String,
    part_size: usize,
    concurrency: usize,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
}

/// The SDK's HTTPS client, trusting the CA certificates in `ca` (and no other).
fn https_trusting(ca: &std::path::Path) -> anyhow::Result<aws_sdk_s3::config::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca)
        .map_err(|e| crate::user_error!("cannot read repository.ca_file {}: {e}", ca.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(crate::user_error!(
            "repository.ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA's certificate in PEM form",
            ca.display()
        ));
    }
    let context = tls::TlsContext::builder()
        // Only the given CA, as `curl --cacert` does: loading the system's store costs
        // every process (wal-push: one per segment) tens of milliseconds.
        .with_trust_store(tls::TrustStore::empty().with_pem_certificate(pem))
        .build()
        .map_err(|e| crate::user_error!("repository.ca_file {}: {e}", ca.display()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

impl S3Repository {
    /// Abort the unfinished multipart upload `id` of `key` (a full key, root included).
    async fn abort_upload(&self, key: &str, id: &str) -> RepoResult<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
            .map_err(|e| classify("abort upload of", key, e))?;
        Ok(())
    }

    pub async fn from_config(r: &RepositoryConfig) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        match (&r.region, &r.endpoint) {
            (Some(region), _) => loader = loader.region(Region::new(region.clone())),
            // S3-compatible servers ignore the region but SigV4 needs one.
            (None, Some(_)) => loader = loader.region(Region::new("us-east-1")),
            (None, None) => {}
        }
        if let (Some(id), Some(file)) = (&r.access_key_id, &r.secret_access_key_file) {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                crate::user_error!(
                    "cannot read repository.secret_access_key_file {}: {e}",
                    file.display()
                )
            })?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.trim(),
                None,
                None,
                "backupctl-config",
            ));
        }
        if let Some(ca) = &r.ca_file {
            loader = loader.http_client(https_trusting(ca)?);
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(crate::user_error!(
                "no AWS region for the S3 repository: set repository.region (or AWS_REGION)"
            ));
        }
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(r.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &r.endpoint {
            b = b.endpoint_url(e);
        }
        let client = Client::from_conf(b.build());
        let prefix = r
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let root = if prefix.is_empty() {
            format!("{}/", r.cluster)
        } else {
            format!("{prefix}/{}/", r.cluster)
        };
        Ok(S3Repository {
            client,
            bucket: r.bucket.clone().expect("validated: s3 has a bucket"),
            root,
            part_size: (r.part_size_mib as usize) << 20,
            concurrency: r.upload_concurrency.max(1),
            storage_class: r.storage_class.as_deref().map(StorageClass::from),
            sse: r.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: r.sse_kms_key_id.clone(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn part_size_for(&self, part_number: i32) -> usize {
        let doublings = ((part_number - 1) / 1000).min(6) as u32;
        self.part_size << doublings
    }

    async fn put_single(&self, key: &str, body: Bytes, opts: &PutOptions) -> RepoResult<u64> {
        let len = body.len() as u64;
        let full = self.full_key(key);
        let metadata: HashMap<String, String> = opts.metadata.clone().into_iter().collect();
        retry(&format!("upload {key}"), ATTEMPTS, || async {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(ByteStream::from(body.clone()))
                .content_length(len as i64)
                .set_metadata(Some(metadata.clone()))
                .set_storage_class(self.storage_class.clone())
                .set_server_side_encryption(self.sse.clone())
                .set_ssekms_key_id(self.sse_kms_key_id.clone());
            if opts.if_absent {
                req = req.if_none_match("*");
            }
            req.send().await.map_err(|e| classify("upload", key, e))?;
            Ok(len)
        })
        .await
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        mut body: BodyReader,
        opts: &PutOptions,
    ) -> RepoResult<u64> {
        let full = self.full_key(key);
        let metadata: HashMap<String, String> = opts.metadata.clone().into_iter().collect();
        let upload_id = retry(&format!("start upload of {key}"), ATTEMPTS, || async {
            let out = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .set_metadata(Some(metadata.clone()))
                .set_storage_class(self.storage_class.clone())
                .set_server_side_encryption(self.sse.clone())
                .set_ssekms_key_id(self.sse_kms_key_id.clone())
                .send()
                .await
                .map_err(|e| classify("start upload of", key, e))?;
            out.upload_id.ok_or_else(|| RepoError::Remote {
                op: "start upload of",
                key: key.to_string(),
                message: "server returned no upload id".into(),
                transient: false,
            })
        })
        .await?;
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full.clone(),
            upload_id: upload_id.clone(),
            armed: true,
        };

        let mut in_flight: JoinSet<RepoResult<CompletedPart>> = JoinSet::new();
        let mut parts = vec![];
        let mut total = 0u64;
        let mut part_number = 1i32;
        let mut chunk = first;
        loop {
            while in_flight.len() >= self.concurrency {
                parts.push(join_part(in_flight.join_next().await, key)?);
            }
            total += chunk.len() as u64;
            let client = self.client.clone();
            let (bucket, full_key, id, k) = (
                self.bucket.clone(),
                full.clone(),
                upload_id.clone(),
                key.to_string(),
            );
            let n = part_number;
            let data = chunk;
            in_flight.spawn(async move {
                retry(&format!("upload part {n} of {k}"), ATTEMPTS, || async {
                    let out = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&full_key)
                        .upload_id(&id)
                        .part_number(n)
                        .content_length(data.len() as i64)
                        .body(ByteStream::from(data.clone()))
                        .send()
                        .await
                        .map_err(|e| classify("upload part of", &k, e))?;
                    Ok(CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag)
                        .build())
                })
                .await
            });
            part_number += 1;
            if part_number > 10_000 {
                return Err(RepoError::Remote {
                    op: "upload",
                    key: key.to_string(),
                    message: "object exceeds S3's 10,000-part limit".into(),
                    transient: false,
                });
            }
            chunk = read_chunk(&mut body, self.part_size_for(part_number), key).await?;
            if chunk.is_empty() {
                break;
            }
        }
        while let Some(res) = in_flight.join_next().await {
            parts.push(join_part(Some(res), key)?);
        }
        parts.sort_by_key(|p| p.part_number);
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        retry(&format!("finish upload of {key}"), ATTEMPTS, || async {
            let mut req = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(completed.clone());
            if opts.if_absent {
                req = req.if_none_match("*");
            }
            req.send()
                .await
                .map_err(|e| classify("finish upload of", key, e))
        })
        .await?;
        guard.armed = false;
        Ok(total)
    }
}

fn join_part(
    res: Option<Result<RepoResult<CompletedPart>, tokio::task::JoinError>>,
    key: &str,
) -> RepoResult<CompletedPart> {
    match res {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(RepoError::io(
            "upload part of",
            key,
            std::io::Error::other(e),
        )),
        None => unreachable!("join_next on a non-empty set"),
    }
}

/// Read up to `size` bytes (fewer only at end of stream).
async fn read_chunk(body: &mut BodyReader, size: usize, key: &str) -> RepoResult<Bytes> {
    // Its own mapping (pages taken as they are written), unmapped once every copy of
    // the part is dropped: see `memmap2` in Cargo.toml.
    let mut buf = memmap2::MmapMut::map_anon(size)
        .map_err(|e| RepoError::io("allocate a part buffer for", key, e))?;
    let mut filled = 0;
    while filled < size {
        let n = body
            .read(&mut buf[filled..])
            .await
            .map_err(|e| RepoError::io("read body for", key, e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(buf).slice(..filled))
}

/// Aborts a multipart upload unless disarmed: on error paths and on cancellation.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let abort = async move {
            let res = client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await;
            match res {
                Ok(_) => tracing::debug!(key, "aborted multipart upload"),
                Err(e) => {
                    tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort multipart upload; retention removes it later")
                }
            }
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            super::background().spawn_on(abort, &handle);
        }
    }
}

/// Map an SDK error to a [`RepoError`], deciding whether it is worth retrying.
fn classify<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> RepoError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
        return RepoError::NotFound {
            key: key.to_string(),
        };
    }
    if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
        return RepoError::AlreadyExists {
            key: key.to_string(),
        };
    }
    let mut message = concise(&err, status, code.as_deref());
    // No credentials anywhere in the chain (keys, environment, profile, instance role):
    // asking again finds none again.
    let no_credentials =
        matches!(&err, SdkError::DispatchFailure(_)) && message.contains("loading credentials");
    if no_credentials {
        message = format!(
            "no S3 credentials: set repository.access_key_id and secret_access_key_file, or \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile or instance role ({message})"
        );
    }
    let transient = match &err {
        SdkError::DispatchFailure(_) if no_credentials => false,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            // 501 Not Implemented answers the same way every time.
            matches!(status, Some(408 | 409 | 429 | 500 | 502..=599))
                || matches!(
                    code.as_deref(),
                    Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")
                )
        }
    };
    tracing::debug!(op, key, error = %DisplayErrorContext(&err), "S3 request failed");
    RepoError::Remote {
        op,
        key: key.to_string(),
        message,
        transient,
    }
}

/// One line for people: the HTTP status and S3's error code and message, or the
/// network error's causes — never the SDK's debug dump of the request and response
/// (logged at debug level, `-v`, by [`classify`]).
fn concise<E>(err: &SdkError<E, HttpResponse>, status: Option<u16>, code: Option<&str>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let (SdkError::ServiceError(_), Some(status)) = (err, status) {
        let mut out = format!("HTTP {status}");
        if let Some(code) = code {
            out.push_str(&format!(" {code}"));
        }
        if let Some(msg) = err.message().filter(|m| !m.is_empty()) {
            out.push_str(&format!(": {msg}"));
        }
        return out;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn to_chrono(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

#[async_trait]
impl Repository for S3Repository {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.root.trim_end_matches('/'))
    }

    async fn put(&self, key: &str, mut body: BodyReader, opts: PutOptions) -> RepoResult<u64> {
        let first = read_chunk(&mut body, self.part_size, key).await?;
        if first.len() < self.part_size {
            self.put_single(key, first, &opts).await
        } else {
            self.put_multipart(key, first, body, &opts).await
        }
    }

    /// User metadata goes in the request that creates the object, so the body is
    /// gathered first.
    async fn put_described_after(
        &self,
        key: &str,
        body: BodyReader,
        metadata: super::LateMetadata,
        if_absent: bool,
    ) -> RepoResult<u64> {
        super::put_described_buffered(self, key, body, metadata, if_absent).await
    }

    /// Nothing to do: an object S3 shows is durable.
    async fn sync(&self, key: &str) -> RepoResult<()> {
        let _ = key;
        Ok(())
    }

    /// Objects larger than [`FIRST_RANGE`] come in ranges, [`RANGES_AHEAD`] of them
    /// fetched while the one before is read (see [`ranged`]); one request otherwise.
    async fn get(&self, key: &str) -> RepoResult<GetObject> {
        let full = self.full_key(key);
        let first = retry(&format!("download {key}"), ATTEMPTS, || async {
            let ranged = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .range(format!("bytes=0-{}", FIRST_RANGE - 1))
                .send()
                .await;
            match ranged {
                // An empty object has no byte 0.
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| classify("download", key, e)),
                other => other.map_err(|e| classify("download", key, e)),
            }
        })
        .await?;
        // A server that ignores Range sends the whole object, without Content-Range.
        let length = first.content_length.unwrap_or(0).max(0) as u64;
        let total = first
            .content_range
            .as_deref()
            .and_then(ranged::total_of)
            .unwrap_or(length);
        let meta = ObjectMeta {
            key: key.to_string(),
            size: total,
            last_modified: to_chrono(first.last_modified.as_ref()),
            metadata: first
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let body: BodyReader = if total > length {
            Box::new(ranged::Ranged::start(
                ranged::Source {
                    client: self.client.clone(),
                    bucket: self.bucket.clone(),
                    full_key: full.clone(),
                    key: key.to_string(),
                    etag: first.e_tag.clone(),
                },
                first.body,
                length,
                total,
            ))
        } else {
            Box::new(first.body.into_async_read())
        };
        Ok(GetObject {
            meta,
            body,
            encryption_key: None,
        })
    }

    async fn head(&self, key: &str) -> RepoResult<Option<ObjectMeta>> {
        let full = self.full_key(key);
        let res = retry(&format!("stat {key}"), ATTEMPTS, || async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify("stat", key, e))
        })
        .await;
        match res {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length.unwrap_or(0).max(0) as u64,
                last_modified: to_chrono(out.last_modified.as_ref()),
                metadata: out
                    .metadata
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            })),
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> RepoResult<Vec<ObjectMeta>> {
        let full_prefix = self.full_key(prefix);
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let page = retry(&format!("list {prefix}"), ATTEMPTS, || async {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| classify("list", prefix, e))
            })
            .await?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.root) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_chrono(obj.last_modified()),
                    metadata: BTreeMap::new(),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> RepoResult<()> {
        let full = self.full_key(key);
        let res = retry(&format!("delete {key}"), ATTEMPTS, || async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| classify("delete", key, e))
        })
        .await;
        match res {
            Ok(_) | Err(RepoError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> RepoResult<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|k| {
                    ObjectIdentifier::builder()
                        .key(self.full_key(k))
                        .build()
                        .ok()
                })
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| RepoError::Remote {
                    op: "delete",
                    key: batch[0].clone(),
                    message: e.to_string(),
                    transient: false,
                })?;
            let out = retry("delete objects", ATTEMPTS, || async {
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| classify("delete", &batch[0], e))
            })
            .await?;
            if let Some(err) = out.errors().first() {
                return Err(RepoError::Remote {
                    op: "delete",
                    key: err.key().unwrap_or_default().to_string(),
                    message: format!(
                        "{}: {}",
                        err.code().unwrap_or("error"),
                        err.message().unwrap_or_default()
                    ),
                    transient: false,
                });
            }
        }
        Ok(())
    }

    /// Multipart uploads never completed or aborted; their writer is unknown (a listing
    /// of uploads carries no metadata), so only the delay removes them.
    async fn leftovers(&self, prefix: &str) -> RepoResult<Vec<super::leftover::Leftover>> {
        let under = self.full_key(prefix);
        let out = retry("list unfinished uploads", ATTEMPTS, || async {
            self.client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&under)
                .send()
                .await
                .map_err(|e| classify("list unfinished uploads under", &under, e))
        })
        .await;
        let out = match out {
            Ok(out) => out,
            Err(RepoError::Remote { message, .. }) if message.contains("NotImplemented") => {
                return Ok(vec![])
            }
            Err(e) => return Err(e),
        };
        let mut found = vec![];
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            let parts = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| classify("list the parts of", key, e))?;
            found.push(super::leftover::Leftover {
                id: format!("{key}\n{id}"),
                bytes: parts
                    .parts()
                    .iter()
                    .filter_map(|p| p.size())
                    .map(|s| s.max(0) as u64)
                    .sum(),
                modified: to_chrono(u.initiated()),
                writer: None,
            });
        }
        Ok(found)
    }

    async fn remove_leftovers(&self, which: &[super::leftover::Leftover]) -> RepoResult<usize> {
        let mut removed = 0;
        for l in which {
            let Some((key, id)) = l.id.split_once('\n') else {
                continue;
            };
            self.abort_upload(key, id).await?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> RepoResult<usize> {
        let cutoff = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let res = retry("list unfinished uploads", ATTEMPTS, || async {
            self.client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.root)
                .send()
                .await
                .map_err(|e| classify("list unfinished uploads under", &self.root, e))
        })
        .await;
        let out = match res {
            Ok(out) => out,
            // Some S3-compatible servers lack ListMultipartUploads; a bucket lifecycle
            // rule (AbortIncompleteMultipartUpload) is the remedy there.
            Err(RepoError::Remote { message, .. }) if message.contains("NotImplemented") => {
                tracing::warn!("the S3 server cannot list unfinished multipart uploads; configure an AbortIncompleteMultipartUpload lifecycle rule on the bucket");
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            if to_chrono(u.initiated()).is_some_and(|t| t < cutoff) {
                self.abort_upload(key, id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
