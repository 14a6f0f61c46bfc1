//! Azure Blob Storage backend, through the official Azure SDK for Rust (`azure_storage_blob`).
//!
//! - One container holds the objects, as block blobs named by their [`ObjectName`] (no folders,
//!   no metadata, no tags, no content type of ours: Azure shows `application/octet-stream`).
//! - An upload buffers [`AzureOptions::block_size`] bytes (4 MiB by default), stages them as one
//!   block, and commits the block list only when all are in, with `If-None-Match: *`, so a blob becomes
//!   visible whole, once, and never replaces another. Memory: about two blocks.
//! - Block ids are 24 bytes: the upload's start time (Unix seconds, u64 BE), 8 random bytes,
//!   the block index (u64 BE). Garbage collection reads the start time of a blob that has only
//!   uncommitted blocks to honour the grace period, then discards the blocks by committing an
//!   empty block list (`If-None-Match: *`) and deleting the empty blob. Documents are never
//!   empty (a header is at least 44 bytes), so empty blobs are never listed as documents.
//! - Authentication: Entra ID through any `azure_core` token credential (managed identity in
//!   production, see [`AzureBlob::with_managed_identity`]), or a SAS in the container URL (tests
//!   against Azurite). The SDK retries transient failures (exponential back-off, see
//!   [`AzureOptions`]).

use std::collections::{HashMap, HashSet};
use std::num::NonZero;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use azure_core::http::{
    ClientOptions, ExponentialRetryOptions, RequestContent, RetryOptions, StatusCode, Url,
};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions, BlockListType,
    BlockLookupList, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use futures_util::TryStreamExt;

use crate::backend::{BlobBackend, GcReport, Upload};
use crate::error::{BlobError, Result};
use crate::name::ObjectName;

const BLOCK_ID_LEN: usize = 24;

/// Client settings for [`AzureBlob`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AzureOptions {
    /// Retries of a failed request (exponential back-off from `initial_delay`).
    pub max_retries: u32,
    /// First back-off delay.
    pub initial_delay: Duration,
    /// Longest back-off delay.
    pub max_delay: Duration,
    /// Give up retrying after this long.
    pub max_total_elapsed: Duration,
    /// Bytes per staged block (at least 1, at most 4000 MiB; a blob holds at most 50 000
    /// blocks, so 4 MiB blocks allow documents up to about 195 GiB).
    pub block_size: usize,
}

impl Default for AzureOptions {
    /// The SDK's defaults: 8 retries from 200 ms, at most 30 s apart, for at most 60 s.
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_total_elapsed: Duration::from_secs(60),
            block_size: 4 << 20,
        }
    }
}

impl AzureOptions {
    /// Few, quick retries (tests against a local emulator: a refused connection fails in a
    /// second instead of a minute).
    pub fn quick() -> Self {
        Self {
            max_retries: 2,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_total_elapsed: Duration::from_secs(2),
            block_size: 4 << 20,
        }
    }

    /// These options with another block size.
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    fn client_options(&self) -> BlobContainerClientOptions {
        let retry = ExponentialRetryOptions {
            max_retries: self.max_retries,
            initial_delay: to_time(self.initial_delay),
            max_delay: to_time(self.max_delay),
            max_total_elapsed: to_time(self.max_total_elapsed),
        };
        let client_options = ClientOptions { retry: RetryOptions::exponential(retry), ..Default::default() };
        BlobContainerClientOptions { client_options, ..Default::default() }
    }
}

fn to_time(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::seconds(60))
}

fn azure(op: &'static str) -> impl FnOnce(azure_core::Error) -> BlobError {
    move |e| {
        let status = e.http_status().map(u16::from);
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        BlobError::Azure { op, status, source: Box::new(Redacted(redact_sas(&text))) }
    }
}

/// An error message with SAS signatures removed.
#[derive(Debug)]
struct Redacted(String);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

/// Replaces the value of every `sig=` query parameter with `REDACTED`.
fn redact_sas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("sig=") {
        let (head, tail) = rest.split_at(i + 4);
        out.push_str(head);
        out.push_str("REDACTED");
        let end =
            tail.find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace()).unwrap_or(tail.len());
        rest = tail.get(end..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn status(e: &azure_core::Error) -> Option<StatusCode> {
    e.http_status()
}

/// Documents in an Azure Blob Storage container.
#[derive(Clone)]
pub struct AzureBlob {
    container: Arc<BlobContainerClient>,
    block_size: usize,
}

impl std::fmt::Debug for AzureBlob {
    /// Shows the container URL without its query (which may hold a SAS).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.container.url();
        f.debug_struct("AzureBlob")
            .field("container", &format_args!("{}{}", url.origin().ascii_serialization(), url.path()))
            .finish()
    }
}

impl AzureBlob {
    /// A container reached with an Entra ID token credential (production). `container_url` is
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER`, without a trailing slash.
    pub fn new(
        container_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: &AzureOptions,
    ) -> Result<Self> {
        let url = parse_url(container_url)?;
        let client = BlobContainerClient::new(url, Some(credential), Some(options.client_options()))
            .map_err(azure("create client"))?;
        Ok(Self { container: Arc::new(client), block_size: options.block_size.clamp(1, 4000 << 20) })
    }

    /// A container reached with the managed identity of the host (Azure VM, App Service,
    /// Container Apps, AKS workload identity through the environment).
    pub fn with_managed_identity(container_url: &str, options: &AzureOptions) -> Result<Self> {
        let cred = azure_identity::ManagedIdentityCredential::new(None).map_err(azure("managed identity"))?;
        Self::new(container_url, cred, options)
    }

    /// A container reached with a SAS: `container_url` carries the SAS as its query
    /// (`https://…/CONTAINER?sv=…&sig=…`). The URL is a secret; it is not kept in `Debug` output
    /// beyond what the SDK's own redacting `Debug` shows.
    pub fn with_sas_url(container_url: &str, options: &AzureOptions) -> Result<Self> {
        let url = parse_url(container_url)?;
        let client = BlobContainerClient::new(url, None, Some(options.client_options()))
            .map_err(azure("create client"))?;
        Ok(Self { container: Arc::new(client), block_size: options.block_size.clamp(1, 4000 << 20) })
    }

    /// Creates the container if it does not exist.
    pub async fn create_container_if_missing(&self) -> Result<()> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(StatusCode::Conflict) => Ok(()),
            Err(e) => Err(azure("create container")(e)),
        }
    }

    /// Names of blobs that have only uncommitted blocks (unfinished uploads), valid names only.
    pub async fn list_unfinished(&self) -> Result<Vec<ObjectName>> {
        let committed: HashSet<String> = self.list_items(false).await?.into_iter().map(|i| i.name).collect();
        let mut out: Vec<ObjectName> = self
            .list_items(true)
            .await?
            .into_iter()
            .filter(|i| !committed.contains(&i.name))
            .filter_map(|i| ObjectName::parse(&i.name).ok())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn list_items(&self, uncommitted: bool) -> Result<Vec<Item>> {
        let mut opts = BlobContainerClientListBlobsOptions::default();
        if uncommitted {
            opts.include = Some(vec![ListBlobsIncludeItem::UncommittedBlobs]);
        }
        let mut pager = self.container.list_blobs(Some(opts)).map_err(azure("list blobs"))?;
        let mut out = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(azure("list blobs"))? {
            let Some(name) = item.name else { continue };
            let props = item.properties;
            out.push(Item {
                name,
                len: props.as_ref().and_then(|p| p.content_length),
                modified: props.as_ref().and_then(|p| p.last_modified).map(SystemTime::from),
            });
        }
        Ok(out)
    }

    /// Discards a blob's uncommitted blocks: commit an empty list (only if nothing is committed),
    /// then delete the empty blob. Returns false if a commit got there first.
    async fn discard_blocks(&self, name: &str) -> Result<bool> {
        let blob = self.container.blob_client(name);
        let list = BlockLookupList { latest: Some(Vec::new()), ..Default::default() };
        let body: RequestContent<BlockLookupList, _> = list.try_into().map_err(azure("discard blocks"))?;
        let opts =
            BlockBlobClientCommitBlockListOptions { if_none_match: Some("*".into()), ..Default::default() };
        match blob.block_blob_client().commit_block_list(body, Some(opts)).await {
            Ok(_) => {}
            Err(e) if matches!(status(&e), Some(StatusCode::Conflict | StatusCode::PreconditionFailed)) => {
                return Ok(false);
            }
            Err(e) => return Err(azure("discard blocks")(e)),
        }
        self.delete_empty(name).await?;
        Ok(true)
    }

    async fn delete_empty(&self, name: &str) -> Result<()> {
        let blob = self.container.blob_client(name);
        // Delete only if it is still empty: a real document is never empty.
        let props = match blob.get_properties(None).await {
            Ok(p) => p,
            Err(e) if status(&e) == Some(StatusCode::NotFound) => return Ok(()),
            Err(e) => return Err(azure("blob properties")(e)),
        };
        if props.content_length().map_err(azure("blob properties"))?.unwrap_or(0) != 0 {
            return Ok(());
        }
        match blob.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(StatusCode::NotFound) => Ok(()),
            Err(e) => Err(azure("delete blob")(e)),
        }
    }

    /// The start time (Unix seconds) of the upload that staged a blob's uncommitted blocks.
    async fn upload_started(&self, name: &str) -> Result<Option<u64>> {
        let blob = self.container.blob_client(name);
        let list = match blob.block_blob_client().get_block_list(BlockListType::Uncommitted, None).await {
            Ok(r) => r.into_model().map_err(azure("get block list"))?,
            Err(e) if status(&e) == Some(StatusCode::NotFound) => return Ok(None),
            Err(e) => return Err(azure("get block list")(e)),
        };
        let first = list.uncommitted_blocks.unwrap_or_default().into_iter().filter_map(|b| b.name).next();
        Ok(first.and_then(|id| id.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok())).map(u64::from_be_bytes))
    }
}

fn parse_url(s: &str) -> Result<Url> {
    if s.ends_with('/') {
        return Err(BlobError::Invalid { what: "container url", reason: "must not end with a slash" });
    }
    Url::parse(s).map_err(|_| BlobError::Invalid { what: "container url", reason: "not a valid url" })
}

struct Item {
    name: String,
    len: Option<u64>,
    modified: Option<SystemTime>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn old_enough(modified: Option<SystemTime>, grace: Duration) -> bool {
    match modified {
        Some(t) => SystemTime::now().duration_since(t).map(|age| age >= grace).unwrap_or(grace.is_zero()),
        None => grace.is_zero(),
    }
}

impl BlobBackend for AzureBlob {
    type Upload = AzureUpload;

    async fn begin(&self, name: &ObjectName) -> Result<AzureUpload> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|_| BlobError::Core(kluis_core::Error::Rng))?;
        Ok(AzureUpload {
            backend: self.clone(),
            name: name.clone(),
            started: now_secs(),
            nonce,
            blocks: Vec::new(),
            buf: Vec::with_capacity(self.block_size),
            len: 0,
        })
    }

    async fn len(&self, name: &ObjectName) -> Result<u64> {
        let blob = self.container.blob_client(name.as_str());
        match blob.get_properties(None).await {
            Ok(p) => match p.content_length().map_err(azure("blob properties"))? {
                Some(0) | None => Err(BlobError::NotFound),
                Some(n) => Ok(n),
            },
            Err(e) if status(&e) == Some(StatusCode::NotFound) => Err(BlobError::NotFound),
            Err(e) => Err(azure("blob properties")(e)),
        }
    }

    async fn read_range(&self, name: &ObjectName, start: u64, end: u64, out: &mut Vec<u8>) -> Result<()> {
        let n = end
            .checked_sub(start)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(BlobError::Invalid { what: "range", reason: "end before start or too long" })?;
        if n == 0 {
            return Ok(());
        }
        let blob = self.container.blob_client(name.as_str());
        let opts = BlobClientDownloadOptions {
            range: Some((start..end).into()),
            parallel: NonZero::new(1),
            partition_size: NonZero::new(n.max(1)),
            ..Default::default()
        };
        let at = out.len();
        out.resize(at + n, 0);
        let dst = out.get_mut(at..).ok_or(BlobError::Task("buffer"))?;
        let r = blob.download_into(dst, Some(opts)).await;
        match r {
            Ok(res) if res.len == n => Ok(()),
            Ok(_) => {
                out.truncate(at);
                Err(BlobError::Invalid { what: "range", reason: "beyond the end of the object" })
            }
            Err(e) => {
                out.truncate(at);
                match status(&e) {
                    Some(StatusCode::NotFound) => Err(BlobError::NotFound),
                    Some(StatusCode::RequestedRangeNotSatisfiable) => {
                        Err(BlobError::Invalid { what: "range", reason: "beyond the end of the object" })
                    }
                    _ => Err(azure("download")(e)),
                }
            }
        }
    }

    async fn delete(&self, name: &ObjectName) -> Result<bool> {
        let blob = self.container.blob_client(name.as_str());
        match blob.delete(None::<BlobClientDeleteOptions<'_>>).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(StatusCode::NotFound) => Ok(false),
            Err(e) => Err(azure("delete blob")(e)),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectName>> {
        let mut out: Vec<ObjectName> = self
            .list_items(false)
            .await?
            .into_iter()
            .filter(|i| i.len.unwrap_or(0) > 0)
            .filter_map(|i| ObjectName::parse(&i.name).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn collect_garbage(&self, live: &HashSet<ObjectName>, grace: Duration) -> Result<GcReport> {
        let mut report = GcReport::default();
        let committed: HashMap<String, Item> =
            self.list_items(false).await?.into_iter().map(|i| (i.name.clone(), i)).collect();
        for (name, item) in &committed {
            let Ok(obj) = ObjectName::parse(name) else { continue };
            if item.len.unwrap_or(0) == 0 {
                // A leftover of discarding blocks: never a document.
                if old_enough(item.modified, grace) {
                    self.delete_empty(name).await?;
                    report.unfinished += 1;
                }
            } else if live.contains(&obj) {
                report.kept += 1;
            } else if old_enough(item.modified, grace) && self.delete(&obj).await? {
                report.orphans += 1;
            }
        }
        for item in self.list_items(true).await? {
            if committed.contains_key(&item.name) || ObjectName::parse(&item.name).is_err() {
                continue;
            }
            let started = self.upload_started(&item.name).await?;
            let age = started.map(|s| Duration::from_secs(now_secs().saturating_sub(s)));
            let stale = match age {
                Some(a) => a >= grace,
                // Blocks we did not stage (or already gone): by the listing's time if any.
                None => old_enough(item.modified, grace),
            };
            if stale && self.discard_blocks(&item.name).await? {
                report.unfinished += 1;
            }
        }
        Ok(report)
    }
}

/// An upload of staged blocks.
#[derive(Debug)]
pub struct AzureUpload {
    backend: AzureBlob,
    name: ObjectName,
    started: u64,
    nonce: [u8; 8],
    blocks: Vec<Vec<u8>>,
    buf: Vec<u8>,
    len: u64,
}

impl AzureUpload {
    fn block_id(&self, index: u64) -> Vec<u8> {
        let mut id = Vec::with_capacity(BLOCK_ID_LEN);
        id.extend_from_slice(&self.started.to_be_bytes());
        id.extend_from_slice(&self.nonce);
        id.extend_from_slice(&index.to_be_bytes());
        id
    }
}

impl AzureUpload {
    /// Stages the buffered bytes as the next block (the buffer moves into the request body).
    async fn stage(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let id = self.block_id(self.blocks.len() as u64);
        let cap = self.backend.block_size;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(cap));
        let n = data.len() as u64;
        let body: RequestContent<bytes::Bytes, azure_core::http::NoFormat> = bytes::Bytes::from(data).into();
        let blob = self.backend.container.blob_client(self.name.as_str());
        blob.block_blob_client().stage_block(&id, n, body, None).await.map_err(azure("stage block"))?;
        self.blocks.push(id);
        Ok(())
    }
}

impl Upload for AzureUpload {
    async fn append(&mut self, part: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(part);
        self.len += part.len() as u64;
        if self.buf.len() >= self.backend.block_size {
            self.stage().await?;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<u64> {
        self.stage().await?;
        if self.blocks.is_empty() {
            return Err(BlobError::Invalid { what: "upload", reason: "nothing was staged" });
        }
        let blob = self.backend.container.blob_client(self.name.as_str());
        let list = BlockLookupList { latest: Some(self.blocks.clone()), ..Default::default() };
        let body: RequestContent<BlockLookupList, _> = list.try_into().map_err(azure("commit blocks"))?;
        let opts =
            BlockBlobClientCommitBlockListOptions { if_none_match: Some("*".into()), ..Default::default() };
        match blob.block_blob_client().commit_block_list(body, Some(opts)).await {
            Ok(_) => Ok(self.len),
            Err(e) if matches!(status(&e), Some(StatusCode::Conflict | StatusCode::PreconditionFailed)) => {
                Err(BlobError::AlreadyExists)
            }
            Err(e) => Err(azure("commit blocks")(e)),
        }
    }

    async fn abort(self) -> Result<()> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        self.backend.discard_blocks(self.name.as_str()).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_never_in_debug_or_errors() {
        assert_eq!(
            redact_sas("GET http://h/c?sv=1&sig=abc%2Fdef&se=2 (x)"),
            "GET http://h/c?sv=1&sig=REDACTED&se=2 (x)"
        );
        assert_eq!(redact_sas("url (http://h/c?sig=SECRET)"), "url (http://h/c?sig=REDACTED)");
        assert_eq!(redact_sas("no signature"), "no signature");
        let b = AzureBlob::with_sas_url(
            "http://127.0.0.1:9/devstoreaccount1/c?sv=2021-08-06&sig=SECRETSIG",
            &AzureOptions::quick(),
        )
        .unwrap();
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("SECRETSIG") && dbg.contains("/devstoreaccount1/c"), "{dbg}");
    }

    #[test]
    fn container_url_checks() {
        let o = AzureOptions::quick();
        assert!(matches!(
            AzureBlob::with_sas_url("http://127.0.0.1:9/acct/c/", &o),
            Err(BlobError::Invalid { .. })
        ));
        assert!(matches!(AzureBlob::with_sas_url("not a url", &o), Err(BlobError::Invalid { .. })));
    }

    /// A refused connection fails quickly with a typed error whose text holds no signature.
    #[tokio::test]
    async fn unreachable_service_is_a_typed_error_without_the_sas() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let b = AzureBlob::with_sas_url(
            &format!("http://127.0.0.1:{port}/devstoreaccount1/c?sv=1&sig=SECRETSIG"),
            &AzureOptions::quick(),
        )
        .unwrap();
        let e = b.len(&ObjectName::random().unwrap()).await.unwrap_err();
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        assert!(matches!(e, BlobError::Azure { status: None, .. }), "{e:?}");
        assert!(!text.contains("SECRETSIG") && !format!("{e:?}").contains("SECRETSIG"), "{text}");
        // The transport error quotes the URL: the redaction is what keeps the signature out.
        assert!(text.contains("sig=REDACTED"), "{text}");
    }
}
