//! The file service: uploads streamed into the store, metadata in the
//! database, downloads with ranges, signed links, per-org settings, usage
//! and quota, and the sweeps that keep the two sides in step.
//!
//! Order of writes: the object first, then its row, so a row never points
//! at a missing object. Deleting is the other way round: the row first,
//! then the object. An object a crash left without a row is removed by
//! [`Files::sweep_orphans`] once it is older than the grace period.

use std::fmt::Display;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use modelroute_db::schema::{files, org_file_settings};
use modelroute_db::{DbConn, DbError, DbPool, db_run};
use modelroute_types::{ExecutionId, FileId, OrgId, ProjectId, time};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use serde::Serialize;

use crate::links::LinkSigner;
use crate::{FileError, FilesConfig, sniff, store};

/// Why a file is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Uploaded by the customer.
    Upload,
    /// Produced by an execution (a provider's output, re-hosted).
    Output,
    /// An export of the org's data (docs/PRIVACY.md); kept as uploads are.
    Export,
}

impl Purpose {
    /// The stored and sent name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Output => "output",
            Self::Export => "export",
        }
    }

    fn parse_stored(s: &str) -> Result<Self, DbError> {
        match s {
            "upload" => Ok(Self::Upload),
            "output" => Ok(Self::Output),
            "export" => Ok(Self::Export),
            other => Err(DbError::UnknownValue { what: "file purpose", value: other.to_owned() }),
        }
    }
}

/// A file's metadata, as the org sees it (the storage key stays inside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    /// `file_…`.
    pub id: FileId,
    /// The owner.
    pub org_id: OrgId,
    /// The project of the key that uploaded it, or of the execution.
    pub project_id: Option<ProjectId>,
    /// Upload or output.
    pub purpose: Purpose,
    /// The customer's name for it (display and `Content-Disposition` only).
    pub filename: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The content type declared (or, when none was, detected).
    pub content_type: String,
    /// What the first bytes say it is, when they say.
    pub detected_type: Option<String>,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// The execution that produced an output.
    pub execution_id: Option<ExecutionId>,
    /// When it was stored.
    pub created_at: NaiveDateTime,
    /// When it is deleted.
    pub expires_at: Option<NaiveDateTime>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = files)]
struct Row {
    id: String,
    org_id: String,
    project_id: Option<String>,
    purpose: String,
    filename: String,
    size_bytes: i64,
    declared_type: String,
    detected_type: Option<String>,
    sha256: String,
    execution_id: Option<String>,
    created_at: NaiveDateTime,
    expires_at: Option<NaiveDateTime>,
}

impl Row {
    fn into_record(self) -> Result<FileRecord, FileError> {
        Ok(FileRecord {
            id: FileId::from_trusted(self.id),
            org_id: OrgId::from_trusted(self.org_id),
            project_id: self.project_id.map(ProjectId::from_trusted),
            purpose: Purpose::parse_stored(&self.purpose)?,
            filename: self.filename,
            size_bytes: u64::try_from(self.size_bytes).unwrap_or_default(),
            content_type: self.declared_type,
            detected_type: self.detected_type,
            sha256: self.sha256,
            execution_id: self.execution_id.map(ExecutionId::from_trusted),
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

/// A file about to be stored.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// The owner.
    pub org: OrgId,
    /// The project, when known.
    pub project: Option<ProjectId>,
    /// Upload or output.
    pub purpose: Purpose,
    /// The customer's name for it; path components are dropped.
    pub filename: String,
    /// The declared content type (`None` or `application/octet-stream`:
    /// what the content's first bytes say, if that is an allowed type).
    pub content_type: Option<String>,
    /// The execution that produced an output.
    pub execution: Option<ExecutionId>,
}

/// Filters and cursor of a listing.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only this purpose.
    pub purpose: Option<Purpose>,
    /// Only the outputs of this execution.
    pub execution: Option<ExecutionId>,
    /// Files older than this one (the listing is newest first).
    pub after: Option<FileId>,
    /// At most this many (1–100; default 20).
    pub limit: Option<u32>,
}

/// A page of files, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    /// The files.
    pub data: Vec<FileRecord>,
    /// Whether older files follow (`after` = the last id).
    pub has_more: bool,
}

/// A byte range of a download, as a `Range` header says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// A download: the file, the bytes of it being sent, and the stream.
pub struct Download {
    /// The file.
    pub file: FileRecord,
    /// Which bytes (`start..end`); the whole file without a range.
    pub range: std::ops::Range<u64>,
    /// Whether a range was asked for and answered (a 206).
    pub partial: bool,
    /// The bytes.
    pub body: BoxStream<'static, Result<Bytes, FileError>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download").field("file", &self.file.id).field("range", &self.range).finish_non_exhaustive()
    }
}

/// An org's file settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSettings {
    /// How long an upload is kept (the org's choice, else the default).
    pub upload_ttl_secs: u64,
    /// How long an output is kept.
    pub output_ttl_secs: u64,
    /// The quota in bytes, if any (the lower of the org's and the platform's).
    pub quota_bytes: Option<u64>,
    /// Whether each value is the org's own (`false`: the platform default).
    pub upload_ttl_is_default: bool,
    /// See `upload_ttl_is_default`.
    pub output_ttl_is_default: bool,
}

/// What an org changes in its file settings; `None` returns a value to the
/// platform default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    /// Time-to-live of uploads.
    pub upload_ttl_secs: Option<u64>,
    /// Time-to-live of outputs.
    pub output_ttl_secs: Option<u64>,
    /// The org's own quota (never above the platform's).
    pub quota_bytes: Option<u64>,
}

/// What an org keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Bytes in files.
    pub bytes: u64,
    /// Files.
    pub files: u64,
    /// The quota, if any.
    pub quota_bytes: Option<u64>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = org_file_settings)]
struct SettingsRow {
    upload_ttl_secs: Option<i64>,
    output_ttl_secs: Option<i64>,
    quota_bytes: Option<i64>,
}

/// The file service. Cheap to clone.
#[derive(Clone)]
pub struct Files {
    pool: DbPool,
    store: Arc<dyn ObjectStore>,
    config: Arc<FilesConfig>,
    signer: LinkSigner,
    /// `scheme://host[:port]` links start with.
    public_url: Arc<str>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files").field("store", &self.config.store).finish_non_exhaustive()
    }
}

/// Reads a stream until `head` holds at least `n` bytes or the stream ends;
/// returns the chunks read (the head is their concatenation).
async fn read_head<S, E>(body: &mut S, n: usize) -> Result<Vec<Bytes>, FileError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut chunks = Vec::new();
    let mut len = 0;
    while len < n {
        match body.next().await {
            Some(Ok(chunk)) => {
                len += chunk.len();
                chunks.push(chunk);
            }
            Some(Err(e)) => return Err(FileError::Interrupted(e.to_string())),
            None => break,
        }
    }
    Ok(chunks)
}

fn head_of(chunks: &[Bytes], n: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(n);
    for c in chunks {
        let take = (n - head.len()).min(c.len());
        head.extend_from_slice(c.get(..take).unwrap_or_default());
        if head.len() == n {
            break;
        }
    }
    head
}

/// The name kept for a file: the last path component, trimmed, control
/// characters dropped, at most 255 bytes; `file` when nothing is left.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned();
    while out.len() > 255 {
        out.pop();
    }
    if out.is_empty() || out == "." || out == ".." { "file".to_owned() } else { out }
}

/// An upload to the store in progress; dropped before it finished (the
/// client went away and the request was dropped), it aborts itself.
struct Pending {
    writer: Option<WriteMultipart>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "aborting an unfinished upload failed");
                }
            });
        }
    }
}

/// Bytes read from a local file per piece of a download.
const FILE_CHUNK: u64 = 1024 * 1024;

/// `range` of a local file, read on the blocking pool a piece at a time.
fn file_stream(file: std::fs::File, range: std::ops::Range<u64>) -> BoxStream<'static, Result<Bytes, FileError>> {
    futures_util::stream::try_unfold((Some(file), range.start), move |(file, pos)| {
        let end = range.end;
        async move {
            let Some(mut file) = file else { return Ok(None) };
            if pos >= end {
                return Ok(None);
            }
            let want = usize::try_from((end - pos).min(FILE_CHUNK)).unwrap_or(usize::MAX);
            let read = tokio::task::spawn_blocking(move || {
                use std::io::{Read as _, Seek as _, SeekFrom};
                let mut buf = vec![0u8; want];
                file.seek(SeekFrom::Start(pos))?;
                file.read_exact(&mut buf)?;
                Ok::<_, std::io::Error>((file, buf))
            })
            .await
            .map_err(|e| FileError::Store(format!("reading a file failed: {e}")))?;
            let (file, buf) = read.map_err(|e| FileError::Store(format!("reading a file failed: {e}")))?;
            Ok(Some((Bytes::from(buf), (Some(file), pos + len_u64(want)))))
        }
    })
    .boxed()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn secs(n: u64) -> chrono::Duration {
    chrono::Duration::seconds(to_i64(n))
}

impl Files {
    /// Opens the configured store and the service over it. `link_key` signs
    /// download links (the server secret's `file-links` key); links start
    /// with `public_url` (`https://api.example.com`).
    ///
    /// # Errors
    /// [`FileError::Config`] for an invalid configuration or a store that
    /// cannot be opened.
    pub fn new(pool: DbPool, config: FilesConfig, link_key: &[u8; 32], public_url: &str) -> Result<Self, FileError> {
        let store = store::open(&config)?;
        Self::with_store(pool, store, config, link_key, public_url)
    }

    /// The same over a store the caller opened.
    ///
    /// # Errors
    /// [`FileError::Config`] for an invalid configuration.
    pub fn with_store(
        pool: DbPool,
        store: Arc<dyn ObjectStore>,
        config: FilesConfig,
        link_key: &[u8; 32],
        public_url: &str,
    ) -> Result<Self, FileError> {
        if config.part_bytes < 5 * 1024 * 1024 {
            return Err(FileError::Config("part_bytes must be at least 5 MiB (S3's smallest part)".into()));
        }
        if config.upload_concurrency == 0 {
            return Err(FileError::Config("upload_concurrency must be at least 1".into()));
        }
        if config.min_ttl_secs == 0 || config.min_ttl_secs > config.max_ttl_secs {
            return Err(FileError::Config("need 0 < min_ttl_secs <= max_ttl_secs".into()));
        }
        for (name, ttl) in [("upload_ttl_secs", config.upload_ttl_secs), ("output_ttl_secs", config.output_ttl_secs)] {
            if ttl < config.min_ttl_secs || ttl > config.max_ttl_secs {
                return Err(FileError::Config(format!("{name} must be within min_ttl_secs..=max_ttl_secs")));
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(config.rehost.timeout_secs.clamp(1, 10)))
            .build()
            .map_err(|e| FileError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            pool,
            store,
            signer: LinkSigner::new(link_key),
            public_url: public_url.trim_end_matches('/').into(),
            config: Arc::new(config),
            http,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    /// The object store (for operators' tools and tests).
    #[must_use]
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Stores a file streamed from `body`: the type checked against the
    /// allow-list and the content's first bytes before anything is written,
    /// the size held under the limit and the org's quota as it arrives, the
    /// SHA-256 computed on the way, the object written in parts (at most
    /// `part_bytes × upload_concurrency` in memory), then its row.
    ///
    /// # Errors
    /// An empty, too large, over-quota or mistyped file, an invalid name, a
    /// body that fails half-way, or the store or database failing; in every
    /// case nothing is left behind (a half-written object is aborted).
    pub async fn upload<S, E>(&self, new: NewFile, body: S) -> Result<FileRecord, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        // Never polled again after its end (a multipart field panics if it is).
        let mut body = body.fuse();
        let declared = new.content_type.as_deref().map(sniff::normalize).filter(|t| t != "application/octet-stream");
        if let Some(t) = &declared
            && !self.allowed(t)
        {
            return Err(self.not_allowed(t));
        }
        let ttl = self.settings(&new.org).await?;
        let (limit, quota) = self.limit_for(&new.org, ttl.quota_bytes).await?;

        let chunks = read_head(&mut body, sniff::HEAD_BYTES).await?;
        let head = head_of(&chunks, sniff::HEAD_BYTES);
        if head.is_empty() {
            return Err(FileError::Empty);
        }
        let (content_type, detected) = match declared {
            Some(t) => {
                let detected = sniff::check(&t, &head).map_err(FileError::UnsupportedType)?;
                (t, detected)
            }
            None => match sniff::detect(&head) {
                Some(d) if self.allowed(d) => (d.to_owned(), Some(d)),
                Some(d) => return Err(self.not_allowed(d)),
                None => {
                    return Err(FileError::UnsupportedType(
                        "no content type was given and the content's type is not recognised".into(),
                    ));
                }
            },
        };

        let id = FileId::new();
        let key = store::key_of(&new.org, &id);
        let path = store::path_of(&key);
        let over = |size: u64| match quota {
            Some((q, used)) if used.saturating_add(size) > q => FileError::QuotaExceeded { quota: q, used },
            _ => FileError::TooLarge { limit },
        };

        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size: u64 = 0;
        let mut buffered = BytesMut::new();
        let mut pending = Pending { writer: None };
        let mut rest = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, FileError>))
            .chain(body.map_err(|e| FileError::Interrupted(e.to_string())));
        let result: Result<(), FileError> = async {
            while let Some(chunk) = rest.next().await {
                let chunk = chunk?;
                size = size.saturating_add(len_u64(chunk.len()));
                if size > limit {
                    return Err(over(size));
                }
                digest.update(&chunk);
                if let Some(writer) = pending.writer.as_mut() {
                    writer.wait_for_capacity(self.config.upload_concurrency).await?;
                    writer.put(chunk);
                } else if buffered.len() + chunk.len() <= self.config.part_bytes {
                    buffered.extend_from_slice(&chunk);
                } else {
                    let upload = self.store.put_multipart(&path).await?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, self.config.part_bytes);
                    writer.put(std::mem::take(&mut buffered).freeze());
                    writer.put(chunk);
                    pending.writer = Some(writer);
                }
            }
            match pending.writer.take() {
                Some(writer) => {
                    writer.finish().await?;
                }
                None => {
                    self.store.put(&path, PutPayload::from(std::mem::take(&mut buffered).freeze())).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if let Some(writer) = pending.writer.take() {
                let _ = writer.abort().await;
            }
            metrics::counter!("files_uploads_total", "outcome" => "refused").increment(1);
            return Err(e);
        }
        drop(pending);

        let now = time::now();
        let ttl_secs = match new.purpose {
            Purpose::Upload | Purpose::Export => ttl.upload_ttl_secs,
            Purpose::Output => ttl.output_ttl_secs,
        };
        let record = FileRecord {
            id,
            org_id: new.org,
            project_id: new.project,
            purpose: new.purpose,
            filename: clean_filename(&new.filename),
            size_bytes: size,
            content_type,
            detected_type: detected.map(str::to_owned),
            sha256: digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            execution_id: new.execution,
            created_at: now,
            expires_at: Some(now + secs(ttl_secs)),
        };
        if let Err(e) = self.insert(&record, &key).await {
            // The row failed: the object must not outlive it.
            if let Err(d) = self.store.delete(&path).await {
                tracing::warn!(error = %d, file = %record.id, "removing the object of a failed upload failed; the orphan sweep will");
            }
            return Err(e);
        }
        metrics::counter!("files_uploads_total", "outcome" => "stored").increment(1);
        metrics::counter!("files_uploaded_bytes_total").increment(size);
        Ok(record)
    }

    fn allowed(&self, content_type: &str) -> bool {
        self.config.allowed_types.iter().any(|t| t == content_type)
    }

    fn not_allowed(&self, content_type: &str) -> FileError {
        FileError::UnsupportedType(format!(
            "content type {content_type} is not allowed (allowed: {})",
            self.config.allowed_types.join(", ")
        ))
    }

    /// The most an upload of `org` may hold now, and the quota with what is
    /// used when the quota is what limits it.
    async fn limit_for(&self, org: &OrgId, quota: Option<u64>) -> Result<(u64, Option<(u64, u64)>), FileError> {
        let Some(quota) = quota else {
            return Ok((self.config.max_upload_bytes, None));
        };
        // The settings were read by the caller: only the bytes here.
        let (used, _) = self.stored(org).await?;
        if used >= quota {
            return Err(FileError::QuotaExceeded { quota, used });
        }
        let room = quota - used;
        Ok(if room < self.config.max_upload_bytes {
            (room, Some((quota, used)))
        } else {
            (self.config.max_upload_bytes, None)
        })
    }

    async fn insert(&self, r: &FileRecord, key: &str) -> Result<(), FileError> {
        db_run!(self.pool, |conn| diesel::insert_into(files::table)
            .values((
                files::id.eq(r.id.as_str()),
                files::org_id.eq(r.org_id.as_str()),
                files::project_id.eq(r.project_id.as_ref().map(ProjectId::as_str)),
                files::purpose.eq(r.purpose.as_str()),
                files::filename.eq(&r.filename),
                files::size_bytes.eq(to_i64(r.size_bytes)),
                files::declared_type.eq(&r.content_type),
                files::detected_type.eq(r.detected_type.as_deref()),
                files::sha256.eq(&r.sha256),
                files::storage_key.eq(key),
                files::execution_id.eq(r.execution_id.as_ref().map(ExecutionId::as_str)),
                files::created_at.eq(r.created_at),
                files::expires_at.eq(r.expires_at),
            ))
            .execute(conn)
            .await)?;
        Ok(())
    }

    /// A file of `org` (another org's is not found).
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn get(&self, org: &OrgId, id: &FileId) -> Result<FileRecord, FileError> {
        let row: Option<Row> = db_run!(self.pool, |conn| files::table
            .filter(files::id.eq(id.as_str()))
            .filter(files::org_id.eq(org.as_str()))
            .select(Row::as_select())
            .first(conn)
            .await
            .optional())?;
        row.ok_or_else(|| FileError::NotFound(id.to_string()))?.into_record()
    }

    /// Files of `org`, newest first.
    ///
    /// # Errors
    /// A limit outside 1–100, or a database failure.
    pub async fn list(&self, org: &OrgId, q: &ListQuery) -> Result<Page, FileError> {
        let limit = q.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(FileError::InvalidInput { field: "limit", message: "must be between 1 and 100".into() });
        }
        let purpose = q.purpose.map(Purpose::as_str);
        let execution = q.execution.as_ref().map(ExecutionId::as_str);
        let after = q.after.as_ref().map(FileId::as_str);
        let rows: Vec<Row> = db_run!(self.pool, |conn| {
            let mut query = files::table
                .filter(files::org_id.eq(org.as_str()))
                .select(Row::as_select())
                .order(files::id.desc())
                .limit(i64::from(limit) + 1)
                .into_boxed();
            if let Some(p) = purpose {
                query = query.filter(files::purpose.eq(p));
            }
            if let Some(e) = execution {
                query = query.filter(files::execution_id.eq(e));
            }
            if let Some(a) = after {
                query = query.filter(files::id.lt(a));
            }
            query.load(conn).await
        })?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        let data = rows.into_iter().take(limit).map(Row::into_record).collect::<Result<_, _>>()?;
        Ok(Page { data, has_more })
    }

    /// A file's bytes, whole or a range of them.
    ///
    /// # Errors
    /// Not found, a range outside the file, or the store failing.
    pub async fn open(&self, org: &OrgId, id: &FileId, range: Option<ByteRange>) -> Result<Download, FileError> {
        let file = self.get(org, id).await?;
        self.download(file, range).await
    }

    /// The same through a signed link (no org: the link names the file).
    ///
    /// # Errors
    /// A link that does not verify or has expired, a deleted file, a range
    /// outside it, or the store failing.
    pub async fn open_signed(
        &self,
        id: &FileId,
        expires: i64,
        signature: &str,
        range: Option<ByteRange>,
    ) -> Result<Download, FileError> {
        self.signer.verify(id, expires, signature, time::unix_seconds(time::now()))?;
        let row: Option<Row> = db_run!(self.pool, |conn| files::table
            .find(id.as_str())
            .select(Row::as_select())
            .first(conn)
            .await
            .optional())?;
        let file = row.ok_or_else(|| FileError::NotFound(id.to_string()))?.into_record()?;
        self.download(file, range).await
    }

    async fn download(&self, file: FileRecord, range: Option<ByteRange>) -> Result<Download, FileError> {
        let size = file.size_bytes;
        let bytes = match range {
            None => 0..size,
            Some(r) => {
                let (start, end) = match r {
                    ByteRange::FromTo(a, b) => (a, b.saturating_add(1).min(size)),
                    ByteRange::From(a) => (a, size),
                    ByteRange::Suffix(n) => (size.saturating_sub(n), size),
                };
                if start >= size || start >= end {
                    return Err(FileError::RangeNotSatisfiable { size });
                }
                start..end
            }
        };
        let path = store::path_of(&store::key_of(&file.org_id, &file.id));
        let options = GetOptions { range: Some(GetRange::Bounded(bytes.clone())), ..GetOptions::default() };
        let result = self.store.get_opts(&path, options).await?;
        let body = match result.payload {
            // The local store's own stream reads 8 KiB at a time; read it in
            // larger pieces (a 1 GiB download was 30× slower than the disk).
            object_store::GetResultPayload::File(file, _) => file_stream(file, bytes.clone()),
            object_store::GetResultPayload::Stream(stream) => stream.map_err(FileError::from).boxed(),
        };
        metrics::counter!("files_downloaded_bytes_total").increment(bytes.end - bytes.start);
        Ok(Download { file, partial: range.is_some(), range: bytes, body })
    }

    /// The whole content of a small file of `org` (an execution's input):
    /// its type and bytes.
    ///
    /// # Errors
    /// Not found, larger than `max_inline_bytes`, or the store failing.
    pub async fn read_inline(&self, org: &OrgId, id: &FileId) -> Result<(FileRecord, Bytes), FileError> {
        let file = self.get(org, id).await?;
        if file.size_bytes > self.config.max_inline_bytes {
            return Err(FileError::InvalidInput {
                field: "file",
                message: format!(
                    "{id} is {} bytes; an execution takes files of at most {} bytes",
                    file.size_bytes, self.config.max_inline_bytes
                ),
            });
        }
        let path = store::path_of(&store::key_of(&file.org_id, &file.id));
        let bytes = self.store.get(&path).await?.bytes().await?;
        Ok((file, bytes))
    }

    /// A signed link to a file's content that works for `ttl_secs` (the
    /// default when `None`; at most `max_link_ttl_secs`), and when it expires.
    ///
    /// # Errors
    /// A time outside 1 s – `max_link_ttl_secs`.
    pub fn link(&self, id: &FileId, ttl_secs: Option<u64>) -> Result<(String, NaiveDateTime), FileError> {
        let ttl = ttl_secs.unwrap_or(self.config.link_ttl_secs);
        if ttl == 0 || ttl > self.config.max_link_ttl_secs {
            return Err(FileError::InvalidInput {
                field: "expires_in",
                message: format!("must be between 1 and {} seconds", self.config.max_link_ttl_secs),
            });
        }
        let expires_at = time::now() + secs(ttl);
        let expires = time::unix_seconds(expires_at);
        let signature = self.signer.sign(id, expires);
        let url = format!("{}/v1/files/{id}/content?expires={expires}&signature={signature}", self.public_url);
        Ok((url, expires_at))
    }

    /// Deletes a file of `org`: the row, then the object.
    ///
    /// # Errors
    /// Not found (another org's included), or a database failure. A store
    /// failure after the row is gone is logged; the orphan sweep finishes it.
    pub async fn delete(&self, org: &OrgId, id: &FileId) -> Result<(), FileError> {
        let key: Option<String> = db_run!(self.pool, |conn| diesel::delete(
            files::table.filter(files::id.eq(id.as_str())).filter(files::org_id.eq(org.as_str()))
        )
        .returning(files::storage_key)
        .get_result(conn)
        .await
        .optional())?;
        let key = key.ok_or_else(|| FileError::NotFound(id.to_string()))?;
        self.remove_objects(vec![key]).await;
        Ok(())
    }

    async fn remove_objects(&self, keys: Vec<String>) {
        let paths = futures_util::stream::iter(keys.into_iter().map(|k| Ok(store::path_of(&k)))).boxed();
        let mut results = self.store.delete_stream(paths);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "deleting an object failed; the orphan sweep will retry"),
            }
        }
    }

    /// Deletes every file of `org` (account termination), in batches.
    /// Returns how many.
    ///
    /// # Errors
    /// A database failure (what was deleted stays deleted; call again).
    pub async fn delete_all_of(&self, org: &OrgId) -> Result<u64, FileError> {
        let mut deleted = 0;
        loop {
            let batch: Vec<(String, String)> = db_run!(self.pool, |conn| files::table
                .filter(files::org_id.eq(org.as_str()))
                .select((files::id, files::storage_key))
                .limit(i64::from(self.config.sweep_batch.max(1)))
                .load(conn)
                .await)?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            deleted += self.delete_rows(batch).await?;
        }
    }

    /// Deletes rows by id, then their objects; returns the rows deleted.
    async fn delete_rows(&self, batch: Vec<(String, String)>) -> Result<u64, FileError> {
        let (ids, keys): (Vec<String>, Vec<String>) = batch.into_iter().unzip();
        let n =
            db_run!(self.pool, |conn| diesel::delete(files::table.filter(files::id.eq_any(&ids))).execute(conn).await)?;
        self.remove_objects(keys).await;
        Ok(len_u64(n))
    }

    /// Deletes files whose time-to-live lapsed by `now`, one batch of at
    /// most `sweep_batch`; returns how many (call until it returns less
    /// than a batch).
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep_expired(&self, now: NaiveDateTime) -> Result<u64, FileError> {
        let batch: Vec<(String, String)> = db_run!(self.pool, |conn| files::table
            .filter(files::expires_at.le(now))
            .select((files::id, files::storage_key))
            .order(files::expires_at.asc())
            .limit(i64::from(self.config.sweep_batch.max(1)))
            .load(conn)
            .await)?;
        if batch.is_empty() {
            return Ok(0);
        }
        let n = self.delete_rows(batch).await?;
        metrics::counter!("files_expired_total").increment(n);
        Ok(n)
    }

    /// Removes objects that have no row and were last written more than
    /// `orphan_grace_secs` before `now` (a crash between the object and its
    /// row, or a delete whose object removal failed). Returns how many.
    ///
    /// # Errors
    /// The store's listing or a database failure.
    pub async fn sweep_orphans(&self, now: NaiveDateTime) -> Result<u64, FileError> {
        let cutoff = now.and_utc() - secs(self.config.orphan_grace_secs);
        let prefix = store::path_of(store::ROOT);
        let mut listing = self.store.list(Some(&prefix));
        let mut removed = 0;
        let mut batch: Vec<String> = Vec::new();
        loop {
            let next = listing.next().await.transpose()?;
            if let Some(meta) = &next
                && meta.last_modified < cutoff
            {
                batch.push(meta.location.to_string());
            }
            if batch.len() >= 500 || (next.is_none() && !batch.is_empty()) {
                removed += self.remove_unreferenced(std::mem::take(&mut batch)).await?;
            }
            if next.is_none() {
                break;
            }
        }
        if removed > 0 {
            metrics::counter!("files_orphans_removed_total").increment(removed);
            tracing::info!(removed, "removed objects without a file row");
        }
        Ok(removed)
    }

    async fn remove_unreferenced(&self, keys: Vec<String>) -> Result<u64, FileError> {
        let known: Vec<String> = db_run!(self.pool, |conn| files::table
            .filter(files::storage_key.eq_any(&keys))
            .select(files::storage_key)
            .load(conn)
            .await)?;
        let orphans: Vec<String> = keys.into_iter().filter(|k| !known.contains(k)).collect();
        let n = len_u64(orphans.len());
        self.remove_objects(orphans).await;
        Ok(n)
    }

    /// An org's file usage and quota.
    ///
    /// # Errors
    /// A database failure.
    pub async fn usage(&self, org: &OrgId) -> Result<Usage, FileError> {
        let (bytes, files) = self.stored(org).await?;
        Ok(Usage { bytes, files, quota_bytes: self.settings(org).await?.quota_bytes })
    }

    /// Bytes and files `org` keeps.
    async fn stored(&self, org: &OrgId) -> Result<(u64, u64), FileError> {
        use diesel::dsl::{count_star, sql};
        use diesel::sql_types::{BigInt, Nullable};
        // PostgreSQL's SUM of a BIGINT is NUMERIC: cast it back.
        let (bytes, count): (Option<i64>, i64) = db_run!(self.pool, |conn| files::table
            .filter(files::org_id.eq(org.as_str()))
            .select((sql::<Nullable<BigInt>>("CAST(SUM(size_bytes) AS BIGINT)"), count_star()))
            .first(conn)
            .await)?;
        Ok((u64::try_from(bytes.unwrap_or_default()).unwrap_or_default(), u64::try_from(count).unwrap_or_default()))
    }

    /// An org's file settings (the defaults where it chose none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn settings(&self, org: &OrgId) -> Result<FileSettings, FileError> {
        let row: Option<SettingsRow> = db_run!(self.pool, |conn| org_file_settings::table
            .find(org.as_str())
            .select(SettingsRow::as_select())
            .first(conn)
            .await
            .optional())?;
        let own = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let (upload, output, quota) =
            row.map_or((None, None, None), |r| (own(r.upload_ttl_secs), own(r.output_ttl_secs), own(r.quota_bytes)));
        let quota = match (quota, self.config.quota_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(FileSettings {
            upload_ttl_secs: upload.unwrap_or(self.config.upload_ttl_secs),
            output_ttl_secs: output.unwrap_or(self.config.output_ttl_secs),
            quota_bytes: quota,
            upload_ttl_is_default: upload.is_none(),
            output_ttl_is_default: output.is_none(),
        })
    }

    /// Changes an org's file settings. A new time-to-live applies to the
    /// org's existing files of that purpose too (their expiry becomes their
    /// creation time plus it), so shortening it deletes old files at the
    /// next sweep.
    ///
    /// # Errors
    /// A time-to-live outside `min_ttl_secs..=max_ttl_secs`, a quota above
    /// the platform's, or a database failure.
    pub async fn set_settings(&self, org: &OrgId, update: SettingsUpdate) -> Result<FileSettings, FileError> {
        let (min, max) = (self.config.min_ttl_secs, self.config.max_ttl_secs);
        for (field, ttl) in [("upload_ttl_secs", update.upload_ttl_secs), ("output_ttl_secs", update.output_ttl_secs)] {
            if let Some(t) = ttl
                && !(min..=max).contains(&t)
            {
                return Err(FileError::InvalidInput {
                    field,
                    message: format!("must be between {min} and {max} seconds"),
                });
            }
        }
        if let (Some(q), Some(platform)) = (update.quota_bytes, self.config.quota_bytes)
            && q > platform
        {
            return Err(FileError::InvalidInput {
                field: "quota_bytes",
                message: format!("may not exceed the platform's quota of {platform} bytes"),
            });
        }
        let now = time::now();
        let values = (
            org_file_settings::upload_ttl_secs.eq(update.upload_ttl_secs.map(to_i64)),
            org_file_settings::output_ttl_secs.eq(update.output_ttl_secs.map(to_i64)),
            org_file_settings::quota_bytes.eq(update.quota_bytes.map(to_i64)),
            org_file_settings::updated_at.eq(now),
        );
        db_run!(self.pool, |conn| diesel::insert_into(org_file_settings::table)
            .values((org_file_settings::org_id.eq(org.as_str()), values))
            .on_conflict(org_file_settings::org_id)
            .do_update()
            .set(values)
            .execute(conn)
            .await)?;
        let settings = self.settings(org).await?;
        self.reexpire(org, Purpose::Upload, settings.upload_ttl_secs).await?;
        self.reexpire(org, Purpose::Output, settings.output_ttl_secs).await?;
        Ok(settings)
    }

    /// Sets the expiry of `org`'s files of `purpose` to their creation time
    /// plus `ttl_secs`.
    async fn reexpire(&self, org: &OrgId, purpose: Purpose, ttl_secs: u64) -> Result<(), FileError> {
        use diesel::sql_types::{BigInt, Text};
        let ttl = to_i64(ttl_secs);
        match self.pool.get().await? {
            DbConn::Postgres(mut conn) => {
                diesel::sql_query(
                    "UPDATE files SET expires_at = created_at + make_interval(secs => $1) \
                     WHERE org_id = $2 AND purpose = $3",
                )
                .bind::<BigInt, _>(ttl)
                .bind::<Text, _>(org.as_str())
                .bind::<Text, _>(purpose.as_str())
                .execute(&mut *conn)
                .await?;
            }
            DbConn::Sqlite(mut conn) => {
                diesel::sql_query(
                    // Whole seconds added, the stored fraction (`.ffffff`) kept.
                    "UPDATE files SET expires_at = strftime('%Y-%m-%d %H:%M:%S', created_at, '+' || ?1 || ' seconds') \
                     || substr(created_at, 20) WHERE org_id = ?2 AND purpose = ?3",
                )
                .bind::<BigInt, _>(ttl)
                .bind::<Text, _>(org.as_str())
                .bind::<Text, _>(purpose.as_str())
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
