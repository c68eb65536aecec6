//! `/v1/files…`: uploads (multipart, streamed to the store), listing,
//! metadata, downloads (ranges; signed links that need no key), deletion,
//! and the org's file settings and usage.

use actix_multipart::Multipart;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use modelroute_files::{ByteRange, Download, FileError, FileRecord, ListQuery, NewFile, Purpose, SettingsUpdate};
use modelroute_identity::Scope;
use modelroute_types::{Code, FileId, time};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::{Caller, Who, authenticate};
use crate::body::Body;
use crate::query;
use crate::state::State;

/// Room for the multipart framing around the file (boundaries, part
/// headers, the `purpose` field).
const FORM_OVERHEAD: u64 = 64 * 1024;
/// The longest `purpose` field read.
const MAX_PURPOSE: usize = 64;

/// A file as the API shows it: OpenAI's file object, and what ModelRoute
/// adds (type, hash, expiry, the execution, a signed download link).
fn file_json(state: &State, f: &FileRecord) -> Value {
    let link = state.services.files.link(&f.id, None).ok();
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.size_bytes,
        "created_at": time::unix_seconds(f.created_at),
        "expires_at": f.expires_at.map(time::unix_seconds),
        "filename": f.filename,
        "purpose": f.purpose.as_str(),
        "status": "processed",
        "content_type": f.content_type,
        "detected_type": f.detected_type,
        "sha256": f.sha256,
        "project_id": f.project_id,
        "execution_id": f.execution_id,
        "download_url": link.as_ref().map(|(url, _)| url),
        "download_url_expires_at": link.map(|(_, at)| time::unix_seconds(at)),
    })
}

fn file_id(raw: &str) -> Result<FileId, ApiError> {
    // A malformed id names no file: the same 404 as another org's.
    raw.parse().map_err(|_| ApiError::from(FileError::NotFound(raw.chars().take(64).collect())))
}

/// What the `purpose` field may say: `upload`, or OpenAI's purposes for
/// inputs (kept as `upload`). `output` files come from executions only.
fn purpose_of(value: &str) -> Result<Purpose, ApiError> {
    match value.trim() {
        "upload" | "user_data" | "vision" | "assistants" => Ok(Purpose::Upload),
        "output" => Err(ApiError::invalid_param("purpose", "output files are made by executions, not uploaded")),
        other => Err(ApiError::invalid_param(
            "purpose",
            format!("unknown purpose `{}` (expected upload)", other.chars().take(32).collect::<String>()),
        )),
    }
}

fn is_multipart(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// `POST /v1/files` (execute): multipart/form-data with a `file` part and
/// an optional `purpose`; the file is streamed into the store as it
/// arrives.
pub(crate) async fn upload(state: State, caller: Caller, payload: Body) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Execute)?.clone();
    let project = match &caller.who {
        Who::Key(p) => Some(p.project_id.clone()),
        Who::User { .. } => None,
    };
    let limit = state.services.files.config().max_upload_bytes;
    let (req, stream, stop) = payload.stream(limit.saturating_add(FORM_OVERHEAD))?;
    if !is_multipart(&req) {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "upload a file as multipart/form-data with a `file` part (and optionally `purpose`)",
        )
        .closing());
    }
    let mut form = Multipart::new(req.headers(), stream);
    // The stream's own error (too large, too slow, cut off) explains a
    // parser failure better than the parser does.
    let failed = |e: ApiError| stop.take().unwrap_or(e).closing();
    let malformed = |e: &dyn std::fmt::Display| {
        ApiError::new(Code::InvalidRequest, format!("the multipart body is malformed: {e}"))
    };
    let mut stored: Option<FileRecord> = None;
    let read: Result<(), ApiError> = async {
        while let Some(field) = form.next().await {
            let mut field = field.map_err(|e| failed(malformed(&e)))?;
            let name = field.name().unwrap_or_default().to_owned();
            match name.as_str() {
                "purpose" => {
                    let value = match field.bytes(MAX_PURPOSE).await {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => return Err(failed(malformed(&e))),
                        Err(_) => return Err(ApiError::invalid_param("purpose", "purpose is too long").closing()),
                    };
                    let value = std::str::from_utf8(&value)
                        .map_err(|_| ApiError::invalid_param("purpose", "purpose must be text").closing())?;
                    purpose_of(value).map_err(ApiError::closing)?;
                }
                "file" if stored.is_none() => {
                    let filename =
                        field.content_disposition().and_then(|d| d.get_filename()).unwrap_or("file").to_owned();
                    let content_type = field.content_type().map(|m| m.essence_str().to_owned());
                    let new = NewFile {
                        org: org.clone(),
                        project: project.clone(),
                        purpose: Purpose::Upload,
                        filename,
                        content_type,
                        execution: None,
                    };
                    let record = state.services.files.upload(new, &mut field).await.map_err(|e| match e {
                        FileError::Interrupted(why) => failed(malformed(&why)),
                        other => failed(other.into()),
                    })?;
                    stored = Some(record);
                }
                "file" => return Err(ApiError::invalid_param("file", "send one file per request").closing()),
                other => {
                    let other = other.chars().take(32).collect::<String>();
                    let message = format!("unknown form field `{other}` (expected file and purpose)");
                    return Err(ApiError::invalid_param(other, message).closing());
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = read {
        // Nothing half-written: a file stored before the form failed (a bad
        // `purpose` after it, an unknown field, a broken end) is deleted.
        if let Some(record) = stored {
            state.services.files.delete(&org, &record.id).await?;
        }
        return Err(e);
    }
    let Some(record) = stored else {
        return Err(stop.take().unwrap_or_else(|| {
            ApiError::invalid_param("file", "the form has no `file` part: send the file as a part named file")
        }));
    };
    Ok(HttpResponse::Created().json(file_json(&state, &record)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesQuery {
    purpose: Option<String>,
    execution_id: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/files` (read): newest first; `purpose`, `execution_id`,
/// `after` (a file id: the files older than it), `limit` (1–100).
pub(crate) async fn list(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let q: FilesQuery = query::parse(&req)?;
    let purpose = match q.purpose.as_deref() {
        None => None,
        Some("upload") => Some(Purpose::Upload),
        Some("output") => Some(Purpose::Output),
        Some("export") => Some(Purpose::Export),
        Some(_) => return Err(ApiError::invalid_param("purpose", "purpose must be upload or output")),
    };
    let query = ListQuery {
        purpose,
        execution: q
            .execution_id
            .map(|e| e.parse().map_err(|_| ApiError::invalid_param("execution_id", "not an execution id (exec_…)")))
            .transpose()?,
        after: q
            .after
            .map(|a| a.parse().map_err(|_| ApiError::invalid_param("after", "not a file id (file_…)")))
            .transpose()?,
        limit: q.limit,
    };
    let page = state.services.files.list(org, &query).await?;
    let data: Vec<Value> = page.data.iter().map(|f| file_json(&state, f)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "has_more": page.has_more,
        "first_id": page.data.first().map(|f| &f.id),
        "last_id": page.data.last().map(|f| &f.id),
    })))
}

/// `GET /v1/files/{id}` (read).
pub(crate) async fn get(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let file = state.services.files.get(org, &file_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(file_json(&state, &file)))
}

/// `DELETE /v1/files/{id}` (execute): the row, then the object.
pub(crate) async fn delete(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Execute)?;
    let id = file_id(&id)?;
    state.services.files.delete(org, &id).await?;
    super::audit::record(&state, &caller, &req, "file.deleted", Some(id.as_str()), None).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "object": "file", "deleted": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedQuery {
    expires: Option<String>,
    signature: Option<String>,
}

/// `GET /v1/files/{id}/content` (read, or a signed link without a key):
/// the bytes, streamed; one `Range` (`bytes=a-b`, `a-`, `-n`) is a 206.
pub(crate) async fn content(state: State, req: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = file_id(&id)?;
    let range = parse_range(&req);
    let q: SignedQuery = query::parse(&req)?;
    let download = match (q.expires, q.signature) {
        (Some(expires), Some(signature)) => {
            let expires = expires.parse().map_err(|_| ApiError::from(FileError::BadSignature))?;
            state.services.files.open_signed(&id, expires, &signature, range).await
        }
        (None, None) => {
            let caller = authenticate(&req).await?;
            let org = caller.require(Scope::Read)?;
            state.services.files.open(org, &id, range).await
        }
        _ => Err(FileError::BadSignature),
    };
    match download {
        Ok(d) => Ok(stream(d)),
        Err(FileError::RangeNotSatisfiable { size }) => Err(ApiError::from(FileError::RangeNotSatisfiable { size })
            .with_header("content-range", format!("bytes */{size}"))),
        Err(e) => Err(e.into()),
    }
}

/// The one range of a `Range: bytes=…` header; anything else (several
/// ranges, another unit, a malformed header) is ignored and the whole file
/// is sent, as RFC 9110 allows.
fn parse_range(req: &HttpRequest) -> Option<ByteRange> {
    let value = req.headers().get(header::RANGE)?.to_str().ok()?.trim();
    let spec = value.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    match (start.is_empty(), end.is_empty()) {
        (true, false) => end.parse().ok().filter(|n| *n > 0).map(ByteRange::Suffix),
        (false, true) => start.parse().ok().map(ByteRange::From),
        (false, false) => {
            let (a, b) = (start.parse().ok()?, end.parse().ok()?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

fn stream(d: Download) -> HttpResponse {
    let mut response = if d.partial { HttpResponse::PartialContent() } else { HttpResponse::Ok() };
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![DispositionParam::Filename(d.file.filename.clone())],
    };
    response
        .insert_header((header::CONTENT_TYPE, d.file.content_type.clone()))
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox"))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{}\"", d.file.sha256)))
        .insert_header((header::CACHE_CONTROL, "private, no-store"));
    if d.partial {
        response.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", d.range.start, d.range.end - 1, d.file.size_bytes),
        ));
    }
    response.no_chunking(d.range.end - d.range.start).streaming(d.body)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    expires_in: Option<u64>,
}

/// `POST /v1/files/{id}/links` `{"expires_in": seconds}` (read): a signed
/// download link that works without a key until it expires.
pub(crate) async fn link(
    state: State,
    caller: Caller,
    id: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let body: LinkBody = payload.json_or_default().await?;
    let file = state.services.files.get(org, &file_id(&id)?).await?;
    let (url, expires_at) = state.services.files.link(&file.id, body.expires_in)?;
    Ok(HttpResponse::Created().json(json!({
        "object": "file.link",
        "file_id": file.id,
        "url": url,
        "expires_at": time::unix_seconds(expires_at),
    })))
}

fn settings_json(s: &modelroute_files::FileSettings) -> Value {
    json!({
        "object": "file_settings",
        "upload_ttl_secs": s.upload_ttl_secs,
        "output_ttl_secs": s.output_ttl_secs,
        "upload_ttl_is_default": s.upload_ttl_is_default,
        "output_ttl_is_default": s.output_ttl_is_default,
        "quota_bytes": s.quota_bytes,
    })
}

/// `GET /v1/files/settings` (read).
pub(crate) async fn get_settings(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    Ok(HttpResponse::Ok().json(settings_json(&state.services.files.settings(org).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    upload_ttl_secs: Option<u64>,
    output_ttl_secs: Option<u64>,
    quota_bytes: Option<u64>,
}

/// `PUT /v1/files/settings` `{"upload_ttl_secs", "output_ttl_secs",
/// "quota_bytes"}` (manage): each `null` or absent returns to the default.
/// A new time-to-live applies to the org's existing files too.
pub(crate) async fn put_settings(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let b: SettingsBody = payload.json().await?;
    let update = SettingsUpdate {
        upload_ttl_secs: b.upload_ttl_secs,
        output_ttl_secs: b.output_ttl_secs,
        quota_bytes: b.quota_bytes,
    };
    let answer = settings_json(&state.services.files.set_settings(org, update).await?);
    super::audit::record(&state, &caller, &req, "files.settings_updated", None, Some(answer.clone())).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /v1/files/usage` (read): bytes and files kept, and the quota.
pub(crate) async fn usage(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let u = state.services.files.usage(org).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "file_usage",
        "bytes": u.bytes,
        "files": u.files,
        "quota_bytes": u.quota_bytes,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |v: &str| {
            let req = actix_web::test::TestRequest::default().insert_header((header::RANGE, v)).to_http_request();
            parse_range(&req)
        };
        assert_eq!(r("bytes=0-99"), Some(ByteRange::FromTo(0, 99)));
        assert_eq!(r("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(r("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=-0"), None);
        assert_eq!(r("bytes=x-"), None);
    }
}
