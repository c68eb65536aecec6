//! Reading request bodies: JSON with errors that name the field
//! (`messages[0].role: unknown variant ...`), under limits a slow or
//! careless client cannot get around.
//!
//! - A JSON endpoint takes `application/json` (or `application/*+json`):
//!   anything else is a 415 before a byte is read. A cross-site form post
//!   (`text/plain`, which browsers send without a preflight) never reaches a
//!   handler. A POST without a body (a rotation with defaults, a logout)
//!   needs no content type.
//! - A `Content-Length` above the limit is a 413 before a byte is read; a
//!   body without one is cut off at the limit.
//! - The body must keep up with a minimum rate after a grace period
//!   ([`BodyPolicy`]): a client trickling a byte every few seconds gets a 408
//!   and its connection closed, while a large body on a good link passes.
//! - At most `max_pending_bodies` bodies are being received at once; past it
//!   a request is answered 503 at once (and its connection closed), so slow
//!   clients cannot hold every descriptor.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use modelroute_types::Code;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ApiError;
use crate::state::State;

/// How bodies are read: the limits of `[server]`.
#[derive(Debug, Clone)]
pub(crate) struct BodyPolicy {
    /// The largest body a JSON endpoint takes.
    pub(crate) max_bytes: usize,
    /// How long a body may take before the minimum rate applies.
    pub(crate) grace: Duration,
    /// After the grace period, the body must have arrived at this rate on
    /// average (bytes per second; 0: no minimum).
    pub(crate) min_bytes_per_sec: u64,
    /// Places for bodies being received at once.
    pub(crate) pending: Arc<Semaphore>,
}

impl BodyPolicy {
    /// When a body that has delivered `received` bytes since `started` must
    /// have delivered more: the grace period, plus the time the bytes so far
    /// buy at the minimum rate.
    fn deadline(&self, started: Instant, received: usize) -> Option<Instant> {
        if self.min_bytes_per_sec == 0 {
            return None;
        }
        let received = u64::try_from(received).unwrap_or(u64::MAX);
        let earned = Duration::from_millis(received.saturating_mul(1000) / self.min_bytes_per_sec);
        started.checked_add(self.grace.saturating_add(earned))
    }
}

/// A request's body, not yet read: handlers take it as an argument and read
/// it after authentication (so nothing is read for a caller who is refused).
pub(crate) struct Body {
    req: HttpRequest,
    payload: Payload,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("path", &self.req.path()).finish_non_exhaustive()
    }
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(Ok(Self { req: req.clone(), payload: payload.take() }))
    }
}

/// Whether a `Content-Type` value is JSON: `application/json` or
/// `application/<anything>+json`, with or without parameters.
/// Why a [`Body::stream`] stopped early, when it was the stream's doing
/// (too large, too slow, the connection failed) rather than the parser's.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamStop(std::rc::Rc<std::cell::RefCell<Option<ApiError>>>);

impl StreamStop {
    /// The stream's own error, if it stopped with one.
    pub(crate) fn take(&self) -> Option<ApiError> {
        self.0.borrow_mut().take()
    }
}

/// A body over `limit` bytes (the connection is closed: the rest is unread).
fn too_large(limit: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::PayloadTooLarge, format!("the request body exceeds {limit} bytes")).closing()
}

/// Every place among the bodies being received is taken.
fn overloaded() -> ApiError {
    ApiError::new(Code::Overloaded, "too many request bodies are arriving at once; retry shortly").closing()
}

/// A body below the policy's minimum rate after its grace period.
fn too_slow(policy: &BodyPolicy) -> ApiError {
    ApiError::new(
        Code::RequestTimeout,
        format!(
            "the request body arrived too slowly (under {} bytes per second after {} ms)",
            policy.min_bytes_per_sec,
            policy.grace.as_millis()
        ),
    )
    .closing()
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Whether the request says it has a body (a non-zero length, or chunks).
fn has_body(req: &HttpRequest) -> bool {
    declared_length(req).is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING)
}

impl Body {
    fn policy(&self) -> Result<BodyPolicy, ApiError> {
        let state = self
            .req
            .app_data::<State>()
            .ok_or_else(|| ApiError::new(Code::Internal, "the server has no body limits configured"))?;
        Ok(state.body.clone())
    }

    /// The body as JSON `T`.
    ///
    /// # Errors
    /// 415 for another content type, 413 beyond the limit, 408 for a body
    /// that arrives too slowly, 503 when too many are arriving, 400 for
    /// JSON that is empty or does not fit `T` (naming the field).
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        self.json_or(None).await
    }

    /// The same, with `T::default()` for a request without a body (all its
    /// fields optional): such a request needs no content type.
    pub(crate) async fn json_or_default<T: DeserializeOwned + Default>(self) -> Result<T, ApiError> {
        self.json_or(Some(T::default())).await
    }

    async fn json_or<T: DeserializeOwned>(self, if_empty: Option<T>) -> Result<T, ApiError> {
        let json = self.req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(is_json);
        if !json && (has_body(&self.req) || if_empty.is_none()) {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "this endpoint takes a JSON body: send it with Content-Type: application/json",
            ));
        }
        let policy = self.policy()?;
        let body = self.read(&policy, policy.max_bytes).await?;
        if body.is_empty() {
            if let Some(default) = if_empty {
                return Ok(default);
            }
            return Err(ApiError::new(Code::InvalidRequest, "the request body is empty; send a JSON object"));
        }
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ApiError::new(Code::InvalidRequest, format!("invalid JSON body: {inner}"))
            } else {
                ApiError::invalid_param(path.clone(), format!("{path}: {inner}"))
            }
        })
    }

    /// The raw body, at most `limit` bytes (for a signed payload, where the
    /// bytes themselves are what is checked).
    ///
    /// # Errors
    /// As [`Body::json`], but for the content type.
    pub(crate) async fn bytes(self, limit: usize) -> Result<Bytes, ApiError> {
        let policy = self.policy()?;
        self.read(&policy, limit).await
    }

    /// The body as a stream for a parser that reads as it goes (a
    /// multipart upload), under the same rules as a read: a declared length
    /// above `limit` is a 413 before a byte is read, the stream stops with
    /// an error past `limit`, below the minimum rate, or when the client's
    /// connection fails, and a place among the pending bodies is held while
    /// it lasts. Why it stopped is in the returned [`StreamStop`], for the
    /// handler to answer with once the parser reports the failure.
    pub(crate) fn stream(
        self,
        limit: u64,
    ) -> Result<
        (
            HttpRequest,
            impl futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + 'static,
            StreamStop,
        ),
        ApiError,
    > {
        let policy = self.policy()?;
        if declared_length(&self.req).is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let Ok(place) = Arc::clone(&policy.pending).try_acquire_owned() else {
            return Err(overloaded());
        };
        let stop = StreamStop::default();
        let slot = stop.clone();
        let started = Instant::now();
        let Self { req, payload } = self;
        let state = (payload, 0usize, place, false);
        let stream = futures_util::stream::unfold(state, move |(mut payload, received, place, done)| {
            let (policy, slot) = (policy.clone(), slot.clone());
            async move {
                if done {
                    return None;
                }
                let fail = |e: ApiError| {
                    let message = e.message().to_owned();
                    slot.0.replace(Some(e));
                    Err(actix_web::error::PayloadError::Io(std::io::Error::other(message)))
                };
                let next = match policy.deadline(started, received) {
                    Some(deadline) => match tokio::time::timeout_at(deadline, payload.next()).await {
                        Ok(next) => next,
                        Err(_) => return Some((fail(too_slow(&policy)), (payload, received, place, true))),
                    },
                    None => payload.next().await,
                };
                match next? {
                    Ok(chunk) => {
                        let received = received + chunk.len();
                        if u64::try_from(received).unwrap_or(u64::MAX) > limit {
                            return Some((fail(too_large(limit)), (payload, received, place, true)));
                        }
                        Some((Ok(chunk), (payload, received, place, false)))
                    }
                    Err(e) => {
                        let e = ApiError::new(Code::InvalidRequest, format!("could not read the request body: {e}"));
                        Some((fail(e.closing()), (payload, received, place, true)))
                    }
                }
            }
        })
        // The multipart parser may poll again after the end.
        .fuse();
        Ok((req, stream, stop))
    }

    async fn read(mut self, policy: &BodyPolicy, limit: usize) -> Result<Bytes, ApiError> {
        if declared_length(&self.req).is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
            return Err(too_large(limit));
        }
        if !has_body(&self.req) {
            return Ok(Bytes::new());
        }
        let Ok(_place) = Arc::clone(&policy.pending).try_acquire_owned() else {
            return Err(overloaded());
        };
        let started = Instant::now();
        let mut body = BytesMut::new();
        loop {
            let next = match policy.deadline(started, body.len()) {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, self.payload.next()).await.map_err(|_| too_slow(policy))?
                }
                None => self.payload.next().await,
            };
            let Some(chunk) = next else { break };
            let chunk = chunk
                .map_err(|e| ApiError::new(Code::InvalidRequest, format!("could not read the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for yes in
            ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
        {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
            "text/json",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }

    #[test]
    fn the_minimum_rate_starts_after_the_grace_period() {
        let policy = BodyPolicy {
            max_bytes: 1 << 20,
            grace: Duration::from_secs(10),
            min_bytes_per_sec: 1000,
            pending: Arc::new(Semaphore::new(1)),
        };
        let t = Instant::now();
        assert_eq!(policy.deadline(t, 0), Some(t + Duration::from_secs(10)));
        assert_eq!(policy.deadline(t, 5000), Some(t + Duration::from_secs(15)));
        let none = BodyPolicy { min_bytes_per_sec: 0, ..policy };
        assert_eq!(none.deadline(t, 0), None);
    }
}
