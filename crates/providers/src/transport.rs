//! What the HTTP adapters share: settings, a pooled hyper client (rustls),
//! one POST with timeouts and error mapping, an incremental SSE parser, and
//! the stream loop that turns a response body into [`StreamEvent`]s through
//! an adapter's [`StreamDecoder`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, BodyStream, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelroute_types::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChatStream, ProviderError, ProviderErrorKind, StreamEvent};

/// Settings of an HTTP provider (`kind = "openai_compatible"`, `"anthropic"`
/// or `"gemini"`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The API root: `https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `https://generativelanguage.googleapis.com/v1beta`.
    pub base_url: String,
    /// The credential (set it through the environment:
    /// `MODELROUTE_PROVIDERS__NAME__API_KEY`). Empty sends none.
    #[serde(default)]
    pub api_key: Secret,
    /// Time to the response head (and, when not streaming, to the whole body).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Longest silence between two streamed chunks.
    #[serde(default = "default_idle")]
    pub stream_idle_timeout_ms: u64,
    /// Bulkhead: calls in flight at once (0 = unbounded).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Unreadable chunks a stream may skip (each logged and counted);
    /// one more fails the stream.
    #[serde(default = "default_malformed")]
    pub max_malformed_chunks: u32,
}

impl HttpConfig {
    /// Settings for the API at `base_url` with this key, every other value
    /// its default.
    #[must_use]
    pub fn new(base_url: impl Into<String>, api_key: Secret) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            timeout_ms: default_timeout(),
            stream_idle_timeout_ms: default_idle(),
            max_concurrency: default_concurrency(),
            max_malformed_chunks: default_malformed(),
        }
    }
}

const fn default_malformed() -> u32 {
    3
}

const fn default_concurrency() -> usize {
    256
}
const fn default_timeout() -> u64 {
    60_000
}
const fn default_idle() -> u64 {
    30_000
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client for one provider.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    pub(crate) config: HttpConfig,
    client: HttpClient,
}

impl Transport {
    /// A transport with its own connection pool.
    pub(crate) fn new(config: HttpConfig) -> Result<Self, String> {
        let root: Uri = config.base_url.parse().map_err(|e| format!("base_url `{}`: {e}", config.base_url))?;
        if !matches!(root.scheme_str(), Some("http" | "https")) {
            return Err(format!("base_url `{}` must start with http:// or https://", config.base_url));
        }
        // The crypto provider is passed explicitly: rustls then never depends
        // on a process-wide default being installed.
        // TCP_NODELAY: a request's head and body leave at once instead of
        // waiting out Nagle's algorithm against the peer's delayed ACK
        // (measured: ~40 ms added to every call without it).
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| format!("TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(https);
        Ok(Self { config, client })
    }

    /// `base_url` + `path`.
    pub(crate) fn uri(&self, path: &str) -> Result<Uri, ProviderError> {
        format!("{}{path}", self.config.base_url.trim_end_matches('/')).parse().map_err(|_| {
            ProviderError::new(ProviderErrorKind::InvalidRequest, "the upstream model name is not valid in a URL")
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// POSTs `body` as JSON; a non-2xx answer becomes an error by
    /// [`error_from_status`], with its `Retry-After`.
    pub(crate) async fn post(
        &self,
        uri: Uri,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ProviderError> {
        self.send(hyper::Method::POST, uri, headers, Some(body)).await
    }

    /// Sends a request (with `body` as JSON, if any); a non-2xx answer
    /// becomes an error by [`error_from_status`], with its `Retry-After`.
    pub(crate) async fn send(
        &self,
        method: hyper::Method,
        uri: Uri,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ProviderError> {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .map_err(|e| ProviderError::new(ProviderErrorKind::InvalidRequest, format!("building the request: {e}")))?;
        let response = tokio::time::timeout(self.timeout(), self.client.request(req))
            .await
            .map_err(|_| {
                ProviderError::new(ProviderErrorKind::Timeout, "the upstream provider did not answer in time")
            })?
            .map_err(|_| {
                ProviderError::new(ProviderErrorKind::Unavailable, "the upstream provider could not be reached")
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        // `Retry-After` in seconds (the form providers send; an HTTP date is ignored).
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::time::timeout(self.timeout(), response.into_body().collect()).await.ok().and_then(Result::ok);
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        let mut error = error_from_status(status, &body);
        error.retry_after = retry_after;
        Err(error)
    }

    /// The whole body of a successful answer.
    pub(crate) async fn read(&self, response: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ProviderError> {
        Ok(tokio::time::timeout(self.timeout(), response.into_body().collect())
            .await
            .map_err(|_| {
                ProviderError::new(ProviderErrorKind::Timeout, "the upstream answer did not complete in time")
            })?
            .map_err(|_| ProviderError::new(ProviderErrorKind::StreamCut, "the upstream answer was cut off"))?
            .to_bytes())
    }

    /// The body as a stream of events, decoded by `decoder`. A silence
    /// longer than `stream_idle_timeout_ms` ends it with a timeout; a body
    /// that ends before the decoder saw the end is a cut stream (the stream
    /// ends without [`StreamEvent::Done`]).
    pub(crate) fn stream<D: StreamDecoder>(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
        decoder: D,
    ) -> ChatStream {
        let idle = Duration::from_millis(self.config.stream_idle_timeout_ms);
        let state = StreamState {
            body: Box::pin(BodyStream::new(response.into_body())),
            parser: SseParser::default(),
            pending: Vec::new(),
            decoder,
            done: false,
            malformed: 0,
            max_malformed: self.config.max_malformed_chunks,
        };
        let stream = futures_util::stream::unfold(state, move |mut s| async move {
            loop {
                if let Some(event) = s.pending.pop() {
                    return Some((event, s));
                }
                if s.done {
                    return None;
                }
                let frame = match tokio::time::timeout(idle, s.body.next()).await {
                    Err(_) => {
                        s.done = true;
                        let e = ProviderError::new(ProviderErrorKind::Timeout, "the upstream stream stalled");
                        return Some((Err(e), s));
                    }
                    Ok(None) => {
                        s.done = true;
                        // The decoder says whether the body's end is a proper end.
                        return s.decoder.end().map(|event| (Ok(event), s));
                    }
                    Ok(Some(Err(_))) => {
                        s.done = true;
                        let e = ProviderError::new(ProviderErrorKind::StreamCut, "the upstream stream broke off");
                        return Some((Err(e), s));
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
                let Ok(data) = frame.into_data() else { continue };
                let mut events = Vec::new();
                for payload in s.parser.push(&data) {
                    match s.decoder.data(&payload) {
                        Ok(decoded) => {
                            let finished = decoded.iter().any(|e| matches!(e, StreamEvent::Done { .. }));
                            events.extend(decoded.into_iter().map(Ok));
                            if finished {
                                s.done = true;
                                break;
                            }
                        }
                        Err(e) if e.kind == ProviderErrorKind::Malformed && s.malformed < s.max_malformed => {
                            // One unreadable chunk among good ones: skipped, and said.
                            s.malformed += 1;
                            tracing::warn!(skipped = s.malformed, "skipped a malformed stream chunk");
                            events.push(Ok(StreamEvent::Malformed));
                        }
                        Err(e) => {
                            events.push(Err(e));
                            s.done = true;
                            break;
                        }
                    }
                }
                events.reverse(); // `pending` pops from the back
                s.pending = events;
            }
        });
        Box::pin(stream)
    }
}

/// Turns one provider's SSE payloads into events.
pub(crate) trait StreamDecoder: Send + 'static {
    /// One `data:` payload. Returning [`StreamEvent::Done`] ends the stream.
    fn data(&mut self, payload: &str) -> Result<Vec<StreamEvent>, ProviderError>;

    /// The body ended without the format's end marker. `Some(Done)` when
    /// the answer is complete all the same — a finish reason arrived (many
    /// hosts close the connection without `[DONE]` or `message_stop`;
    /// Gemini has no marker at all) —; `None` for a cut stream.
    fn end(&mut self) -> Option<StreamEvent>;
}

struct StreamState<D> {
    body: Pin<Box<BodyStream<hyper::body::Incoming>>>,
    parser: SseParser,
    pending: Vec<Result<StreamEvent, ProviderError>>,
    decoder: D,
    done: bool,
    /// Malformed chunks skipped so far, and how many may be.
    malformed: u32,
    max_malformed: u32,
}

/// A malformed answer or chunk: never a success (a stream may skip a few).
pub(crate) fn malformed(what: &str) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Malformed, format!("the upstream provider sent a malformed {what}"))
}

/// Maps an upstream error answer to the adapter's default conclusion and
/// keeps the raw details (status, error code or type, message) for the
/// error-mapping rules. The provider's message is shown to the client only
/// for requests it refused as invalid, where the client needs the reason.
/// Reads the error bodies of OpenAI (`error.code`/`error.type`), Anthropic
/// (`error.type`), Gemini (`error.status`) and Replicate (`detail`).
#[must_use]
pub fn error_from_status(status: StatusCode, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    // Replicate answers problem JSON (RFC 9457): `{"title", "detail", "status"}`.
    let upstream_message = error
        .and_then(|e| e.get("message"))
        .or_else(|| parsed.as_ref().and_then(|v| v.get("detail")))
        .and_then(Value::as_str)
        .map(|m| m.chars().take(500).collect::<String>());
    let upstream_code = error
        .and_then(|e| ["code", "status", "type"].iter().find_map(|k| e.get(*k).and_then(Value::as_str)))
        .map(str::to_owned);
    let mut e = match status.as_u16() {
        408 | 504 => ProviderError::new(ProviderErrorKind::Timeout, "the upstream provider timed out"),
        429 => {
            ProviderError::new(ProviderErrorKind::RateLimited, "the upstream provider is rate limiting; retry later")
        }
        400 | 404 | 413 | 422 => ProviderError::new(
            ProviderErrorKind::InvalidRequest,
            format!("the model rejected the request: {}", upstream_message.as_deref().unwrap_or(status.as_str())),
        ),
        _ => ProviderError::new(
            ProviderErrorKind::Unavailable,
            format!("the upstream provider failed ({})", status.as_u16()),
        ),
    };
    e.status = Some(status.as_u16());
    e.upstream_code = upstream_code;
    e.upstream_message = upstream_message;
    e
}

/// Splits a byte stream into SSE `data:` payloads, across chunk boundaries.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the payloads of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1);
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

/// The end of the first event: (length of the event, length of the separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_frames_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\":").is_empty());
        assert_eq!(p.push(b"1}\n\ndata: [DO"), vec!["{\"a\":1}".to_owned()]);
        assert_eq!(p.push(b"NE]\r\n\r\n: keep-alive comment\n\n"), vec!["[DONE]".to_owned()]);
        assert_eq!(p.push(b"event: ping\ndata: {\"type\":\"ping\"}\n\n"), vec!["{\"type\":\"ping\"}".to_owned()]);
    }

    #[test]
    fn statuses_map_to_kinds() {
        let bad = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = error_from_status(StatusCode::BAD_REQUEST, bad);
        assert_eq!(e.kind, ProviderErrorKind::InvalidRequest);
        assert_eq!(e.upstream_code.as_deref(), Some("context_length_exceeded"));
        assert!(e.message.contains("maximum context length") && !e.is_retryable());
        assert_eq!(error_from_status(StatusCode::TOO_MANY_REQUESTS, b"").kind, ProviderErrorKind::RateLimited);
        assert_eq!(error_from_status(StatusCode::SERVICE_UNAVAILABLE, b"").kind, ProviderErrorKind::Unavailable);
        let auth = error_from_status(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#,
        );
        assert!(auth.is_retryable() && !auth.message.contains("sk-abc"), "our credential problem must not leak");
        assert_eq!(error_from_status(StatusCode::GATEWAY_TIMEOUT, b"").kind, ProviderErrorKind::Timeout);
        // Anthropic's and Gemini's error bodies.
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            error_from_status(StatusCode::from_u16(529).unwrap(), anthropic).upstream_code.as_deref(),
            Some("overloaded_error")
        );
        let gemini = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            error_from_status(StatusCode::TOO_MANY_REQUESTS, gemini).upstream_code.as_deref(),
            Some("RESOURCE_EXHAUSTED")
        );
    }
}
