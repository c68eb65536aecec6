//! OpenAI-compatible chat completions (OpenAI, Together, Groq, Fireworks,
//! vLLM, Ollama, …): translation to and from the wire format, an incremental
//! SSE parser, status-to-error mapping, and the hyper client (rustls, pooled).

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
use serde_json::{Value, json};

use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Provider, ProviderError, ProviderErrorKind, Role, StreamEvent,
    Usage, count_tokens,
};

/// `kind = "openai_compatible"` provider settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The bearer token (set it through the environment:
    /// `MODELROUTE_PROVIDERS__NAME__API_KEY`). Empty sends no `Authorization`.
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

/// An OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    endpoint: Uri,
    client: HttpClient,
}

impl OpenAiProvider {
    /// A provider for `config`, with its own connection pool.
    ///
    /// # Errors
    /// A `base_url` that is not an http(s) URL, or a TLS set-up failure.
    pub fn new(config: OpenAiConfig) -> Result<Self, String> {
        let endpoint: Uri = format!("{}/chat/completions", config.base_url.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("base_url `{}`: {e}", config.base_url))?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err(format!("base_url `{}` must start with http:// or https://", config.base_url));
        }
        // The crypto provider is passed explicitly: rustls then never depends
        // on a process-wide default being installed.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| format!("TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(https);
        Ok(Self { config, endpoint, client })
    }

    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ProviderError> {
        let body = to_wire(request, stream).to_string();
        let mut req = Request::post(self.endpoint.clone()).header("content-type", "application/json");
        if !self.config.api_key.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.config.api_key.expose()));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::new(ProviderErrorKind::InvalidRequest, format!("building the request: {e}")))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let response = tokio::time::timeout(timeout, self.client.request(req))
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
        let body = tokio::time::timeout(timeout, response.into_body().collect()).await.ok().and_then(Result::ok);
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        let mut error = error_from_status(status, &body);
        error.retry_after = retry_after;
        Err(error)
    }
}

impl Provider for OpenAiProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let response = self.send(request, false).await?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| {
                ProviderError::new(ProviderErrorKind::Timeout, "the upstream answer did not complete in time")
            })?
            .map_err(|_| ProviderError::new(ProviderErrorKind::StreamCut, "the upstream answer was cut off"))?
            .to_bytes();
        from_wire(request, &body)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let response = self.send(request, true).await?;
        let idle = Duration::from_millis(self.config.stream_idle_timeout_ms);
        let prompt_estimate: u64 = request.messages.iter().map(|m| count_tokens(&m.content) + 4).sum();
        let body = BodyStream::new(response.into_body());
        let state = StreamState {
            body: Box::pin(body),
            parser: SseParser::default(),
            pending: Vec::new(),
            finish: None,
            usage: None,
            produced: String::new(),
            prompt_estimate,
            done: false,
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
                    Ok(None) => return None, // ended without [DONE]: the caller sees a cut stream
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
                    if payload == "[DONE]" {
                        let usage = s.usage.unwrap_or(Usage {
                            input_tokens: s.prompt_estimate,
                            output_tokens: count_tokens(&s.produced),
                        });
                        events.push(Ok(StreamEvent::Done {
                            finish_reason: s.finish.unwrap_or(FinishReason::Stop),
                            usage,
                        }));
                        s.done = true;
                        break;
                    }
                    match parse_chunk(&payload) {
                        Ok(chunk) => {
                            if let Some(f) = chunk.finish {
                                s.finish = Some(f);
                            }
                            if chunk.usage.is_some() {
                                s.usage = chunk.usage;
                            }
                            if let Some(text) = chunk.content.filter(|t| !t.is_empty()) {
                                s.produced.push_str(&text);
                                events.push(Ok(StreamEvent::Delta(text)));
                            }
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
        Ok(Box::pin(stream))
    }
}

struct StreamState {
    body: std::pin::Pin<Box<BodyStream<hyper::body::Incoming>>>,
    parser: SseParser,
    pending: Vec<Result<StreamEvent, ProviderError>>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    produced: String,
    prompt_estimate: u64,
    done: bool,
}

/// The canonical request in OpenAI's format.
#[must_use]
pub fn to_wire(request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            json!({ "role": role, "content": m.content })
        })
        .collect();
    let mut body = json!({ "model": request.model, "messages": messages, "stream": stream });
    if let Some(obj) = body.as_object_mut() {
        if let Some(n) = request.max_tokens {
            obj.insert("max_tokens".into(), json!(n));
        }
        if !request.stop.is_empty() {
            obj.insert("stop".into(), json!(request.stop));
        }
        if let Some(t) = request.temperature {
            obj.insert("temperature".into(), json!(t));
        }
        if let Some(p) = request.top_p {
            obj.insert("top_p".into(), json!(p));
        }
        if stream {
            obj.insert("stream_options".into(), json!({ "include_usage": true }));
        }
    }
    body
}

#[derive(Deserialize)]
struct WireCompletion {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn malformed(what: &str) -> ProviderError {
    ProviderError::new(ProviderErrorKind::StreamCut, format!("the upstream provider sent a malformed {what}"))
}

/// Parses a non-streamed answer. Missing usage is estimated.
///
/// # Errors
/// A body that is not a chat completion.
pub fn from_wire(request: &ChatRequest, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireCompletion = serde_json::from_slice(body).map_err(|_| malformed("response"))?;
    let choice = wire.choices.into_iter().next().ok_or_else(|| malformed("response (no choices)"))?;
    let content = choice.message.and_then(|m| m.content).unwrap_or_default();
    let usage = wire.usage.map_or_else(
        || Usage {
            input_tokens: request.messages.iter().map(|m| count_tokens(&m.content) + 4).sum(),
            output_tokens: count_tokens(&content),
        },
        |u| Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens },
    );
    Ok(ChatResponse { content, finish_reason: finish_reason(choice.finish_reason.as_deref()), usage })
}

struct Chunk {
    content: Option<String>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

fn parse_chunk(payload: &str) -> Result<Chunk, ProviderError> {
    let wire: WireCompletion = serde_json::from_str(payload).map_err(|_| malformed("stream chunk"))?;
    let choice = wire.choices.into_iter().next();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.as_deref()).map(|f| finish_reason(Some(f)));
    let content = choice.and_then(|c| c.delta).and_then(|d| d.content);
    let usage = wire.usage.map(|u| Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens });
    Ok(Chunk { content, finish, usage })
}

/// Maps an upstream error answer to the adapter's default conclusion and
/// keeps the raw details (status, error code or type, message) for the
/// error-mapping rules. The provider's message is shown to the client only
/// for requests it refused as invalid, where the client needs the reason.
#[must_use]
pub fn error_from_status(status: StatusCode, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let upstream_message =
        error.and_then(|e| e.get("message")).and_then(Value::as_str).map(|m| m.chars().take(500).collect::<String>());
    // OpenAI: error.code (or .type); Gemini: error.status; Anthropic: error.type.
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
    use crate::Message;

    fn req() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                Message { role: Role::System, content: "be brief".into() },
                Message { role: Role::User, content: "Hi".into() },
            ],
            max_tokens: Some(50),
            stop: vec!["\n\n".into()],
            temperature: Some(0.2),
            top_p: None,
        }
    }

    #[test]
    fn request_translates_to_openai_format() {
        let v = to_wire(&req(), true);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"][0], json!({ "role": "system", "content": "be brief" }));
        assert_eq!(v["max_tokens"], 50);
        assert_eq!(v["stop"], json!(["\n\n"]));
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(v.get("top_p").is_none());
    }

    #[test]
    fn parses_a_real_completion_body() {
        // The shape of an OpenAI chat.completion response.
        let body = br#"{"id":"chatcmpl-AbC","object":"chat.completion","created":1731000000,"model":"gpt-4o-mini-2024-07-18",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#;
        let r = from_wire(&req(), body).unwrap();
        assert_eq!(r.content, "Hello! How can I help?");
        assert_eq!(r.usage, Usage { input_tokens: 19, output_tokens: 7 });
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert!(from_wire(&req(), b"{\"nope\":1}").is_err());
    }

    #[test]
    fn sse_parser_handles_split_frames_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\":").is_empty());
        assert_eq!(p.push(b"1}\n\ndata: [DO"), vec!["{\"a\":1}".to_owned()]);
        assert_eq!(p.push(b"NE]\r\n\r\n: keep-alive comment\n\n"), vec!["[DONE]".to_owned()]);
    }

    #[test]
    fn stream_chunks_carry_deltas_finish_and_usage() {
        let c = parse_chunk(r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(c.content.as_deref(), Some("Hel"));
        let c = parse_chunk(r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(c.finish, Some(FinishReason::Length));
        let c = parse_chunk(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!(c.usage, Some(Usage { input_tokens: 3, output_tokens: 2 }));
        assert!(parse_chunk("{not json").is_err());
    }

    #[test]
    fn statuses_map_to_kinds() {
        let bad = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = error_from_status(StatusCode::BAD_REQUEST, bad);
        assert_eq!(e.kind, ProviderErrorKind::InvalidRequest);
        assert!(e.message.contains("maximum context length") && !e.is_retryable());
        assert_eq!(error_from_status(StatusCode::TOO_MANY_REQUESTS, b"").kind, ProviderErrorKind::RateLimited);
        assert_eq!(error_from_status(StatusCode::SERVICE_UNAVAILABLE, b"").kind, ProviderErrorKind::Unavailable);
        let auth = error_from_status(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#,
        );
        assert!(auth.is_retryable() && !auth.message.contains("sk-abc"), "our credential problem must not leak");
        assert_eq!(error_from_status(StatusCode::GATEWAY_TIMEOUT, b"").kind, ProviderErrorKind::Timeout);
    }
}
