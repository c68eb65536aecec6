//! The stand-in HTTP server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::TEST_KEY;
use crate::brain::brain;
use crate::wire::{self, ErrorKind};

/// Which provider's wire format a stand-in speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI chat completions at `/v1/chat/completions`.
    OpenAi,
    /// Anthropic Messages at `/v1/messages`.
    Anthropic,
    /// Gemini at `/v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.
    Gemini,
}

/// A behaviour, chosen by the upstream model name `fault-<name>` (or set for
/// a model with [`StandIn::set_fault`] and [`StandIn::script`]); any other
/// model name answers normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers.
    None,
    /// 429 with `Retry-After: 1`.
    RateLimit,
    /// 429 without `Retry-After`.
    RateLimitBare,
    /// 503 (Anthropic: 529) overloaded.
    Overloaded,
    /// 503 (Anthropic: 529) overloaded, with `Retry-After: 1`.
    OverloadedRetry,
    /// 500.
    ServerError,
    /// 400 with the provider's context-length error.
    Context,
    /// The provider's content filter: OpenAI's 400, Anthropic's `refusal`
    /// stop reason, Gemini's blocked prompt.
    Filter,
    /// 400 when the conversation ends with the assistant's turn (a host
    /// that does not continue a prefix); answers otherwise.
    RefusePrefix,
    /// The connection is closed before any response.
    Reset,
    /// No response head for 60 s.
    Hang,
    /// The response head at once, the first token after 1.5 s.
    SlowFirst,
    /// Reasoning (thinking) deltas every 250 ms for 1.5 s, then the answer.
    Thinks,
    /// A stream that stops after its first event and goes silent.
    Stall,
    /// A stream that goes silent after half its output.
    StallMidway,
    /// A stream whose connection breaks after the first event.
    Cut,
    /// A stream whose connection breaks after half its output.
    CutMidway,
    /// A stream that ends cleanly after its finish reason and usage, but
    /// without its end marker (Gemini has none: a normal answer).
    NoEnd,
    /// A stream that ends cleanly after its finish reason, with neither
    /// usage nor end marker (a host that ignores `stream_options`).
    Bare,
    /// A stream that ends cleanly after its output, before its finish
    /// reason: truncated.
    Truncated,
    /// A stream with this many malformed chunks among its good ones
    /// (`fault-malformed`: one; `fault-malformed-4`: four).
    Malformed(u8),
}

impl Fault {
    fn of(model: &str) -> Self {
        let name = model.strip_prefix("fault-").unwrap_or_default();
        if let Some(n) = name.strip_prefix("malformed-").and_then(|n| n.parse().ok()) {
            return Self::Malformed(n);
        }
        match name {
            "ratelimit" => Self::RateLimit,
            "ratelimit-bare" => Self::RateLimitBare,
            "overloaded" => Self::Overloaded,
            "overloaded-retry" => Self::OverloadedRetry,
            "servererror" => Self::ServerError,
            "context" => Self::Context,
            "filter" => Self::Filter,
            "refuse-prefix" => Self::RefusePrefix,
            "reset" => Self::Reset,
            "hang" => Self::Hang,
            "slowfirst" => Self::SlowFirst,
            "thinks" => Self::Thinks,
            "stall" => Self::Stall,
            "stall-midway" => Self::StallMidway,
            "cut" => Self::Cut,
            "cut-midway" => Self::CutMidway,
            "noend" => Self::NoEnd,
            "bare" => Self::Bare,
            "truncated" => Self::Truncated,
            "malformed" => Self::Malformed(1),
            _ => Self::None,
        }
    }
}

/// Faults set by a test for a model, over what its name says.
#[derive(Debug, Default)]
struct Faults {
    /// Met by the next calls, one each, in order.
    script: std::collections::VecDeque<Fault>,
    /// Met by every call once the script is spent (`None`: the name decides).
    standing: Option<Fault>,
}

#[derive(Debug, Default)]
struct Seen {
    calls: BTreeMap<String, usize>,
    bodies: BTreeMap<String, Value>,
    faults: BTreeMap<String, Faults>,
}

/// A running stand-in. It stops when dropped.
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    wire: Wire,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

impl StandIn {
    /// Starts a stand-in on a free local port.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(wire: Wire) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(wire, Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, wire, seen, task }
    }

    /// The API root to configure as the provider's `base_url`.
    #[must_use]
    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::OpenAi | Wire::Anthropic => format!("http://{}/v1", self.addr),
            Wire::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }

    /// Requests received for `model`.
    ///
    /// # Panics
    /// If a request handler panicked while holding the record.
    #[must_use]
    pub fn calls(&self, model: &str) -> usize {
        self.seen.lock().expect("lock").calls.get(model).copied().unwrap_or(0)
    }

    /// Every later call for `model` meets `fault` (a switchable outage);
    /// `None` hands the choice back to the model's name.
    ///
    /// # Panics
    /// If a request handler panicked while holding the record.
    pub fn set_fault(&self, model: &str, fault: Option<Fault>) {
        self.seen.lock().expect("lock").faults.entry(model.to_owned()).or_default().standing = fault;
    }

    /// The next calls for `model` meet these faults, one call each, in
    /// order (`[Fault::OverloadedRetry, Fault::OverloadedRetry]`: the first
    /// two calls fail, the third answers).
    ///
    /// # Panics
    /// If a request handler panicked while holding the record.
    pub fn script(&self, model: &str, faults: impl IntoIterator<Item = Fault>) {
        self.seen.lock().expect("lock").faults.entry(model.to_owned()).or_default().script.extend(faults);
    }

    /// The last request body received for `model`.
    ///
    /// # Panics
    /// If a request handler panicked while holding the record.
    #[must_use]
    pub fn last_body(&self, model: &str) -> Option<Value> {
        self.seen.lock().expect("lock").bodies.get(model).cloned()
    }
}

/// Breaks the connection once what was sent has left (a break sooner would
/// take the buffered frames with it, which is not what a cut stream does).
async fn cut(tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
}

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> Response<Body> {
    let mut r = Response::builder().status(status).header("content-type", "application/json");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s.to_string());
    }
    r.body(Full::new(Bytes::from(body.to_string())).map_err(|never: Infallible| match never {}).boxed())
        .expect("a valid response")
}

fn error_response(wire: Wire, kind: ErrorKind, message: &str, retry_after: Option<u64>) -> Response<Body> {
    let (status, body) = wire::error(wire, kind, message);
    json_response(status, &body, retry_after)
}

fn authorised(wire: Wire, req: &Request<Incoming>) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match wire {
        Wire::OpenAi => header("authorization").as_deref() == Some(&format!("Bearer {TEST_KEY}")),
        Wire::Anthropic => header("x-api-key").as_deref() == Some(TEST_KEY) && header("anthropic-version").is_some(),
        Wire::Gemini => header("x-goog-api-key").as_deref() == Some(TEST_KEY),
    }
}

/// The model and whether the call streams, from the path (Gemini) or body.
fn route(wire: Wire, path: &str, query: Option<&str>, body: &Value) -> Option<(String, bool)> {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    match wire {
        Wire::OpenAi if path == "/v1/chat/completions" => Some((model?, stream)),
        Wire::Anthropic if path == "/v1/messages" => Some((model?, stream)),
        Wire::Gemini => {
            let rest = path.strip_prefix("/v1beta/models/")?;
            if let Some(m) = rest.strip_suffix(":generateContent") {
                Some((m.to_owned(), false))
            } else {
                let m = rest.strip_suffix(":streamGenerateContent")?;
                query.is_some_and(|q| q.contains("alt=sse")).then(|| (m.to_owned(), true))
            }
        }
        _ => None,
    }
}

async fn handle(wire: Wire, seen: Arc<Mutex<Seen>>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let ok = authorised(wire, &req);
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(error_response(wire, ErrorKind::BadRequest, "the body is not JSON", None));
    };
    let Some((model, stream)) = route(wire, &path, query.as_deref(), &body) else {
        return Ok(json_response(404, &json!({ "error": { "message": format!("no route {path}") } }), None));
    };
    let set = {
        let mut s = seen.lock().expect("lock");
        *s.calls.entry(model.clone()).or_default() += 1;
        s.bodies.insert(model.clone(), body.clone());
        s.faults.get_mut(&model).and_then(|f| f.script.pop_front().or(f.standing))
    };
    if !ok {
        return Ok(error_response(wire, ErrorKind::Auth, "", None));
    }
    let ask = match wire::ask(wire, &body) {
        Ok(ask) => ask,
        Err(message) => return Ok(error_response(wire, ErrorKind::BadRequest, &message, None)),
    };
    let fault = set.unwrap_or_else(|| Fault::of(&model));
    match fault {
        Fault::RateLimit => return Ok(error_response(wire, ErrorKind::RateLimited, "", Some(1))),
        Fault::RateLimitBare => return Ok(error_response(wire, ErrorKind::RateLimited, "", None)),
        Fault::Overloaded => return Ok(error_response(wire, ErrorKind::Overloaded, "", None)),
        Fault::OverloadedRetry => return Ok(error_response(wire, ErrorKind::Overloaded, "", Some(1))),
        Fault::RefusePrefix if ask.prefix.is_some() => {
            let message =
                "This model does not support assistant message prefill. The conversation must end with a user message.";
            return Ok(error_response(wire, ErrorKind::BadRequest, message, None));
        }
        Fault::ServerError => return Ok(error_response(wire, ErrorKind::Server, "", None)),
        Fault::Context => return Ok(error_response(wire, ErrorKind::ContextLength, "", None)),
        Fault::Filter if wire == Wire::OpenAi => {
            return Ok(error_response(wire, ErrorKind::ContentPolicy, "", None));
        }
        Fault::Filter if wire == Wire::Gemini => {
            let blocked = json!({ "promptFeedback": { "blockReason": "SAFETY", "safetyRatings": [] },
                                  "usageMetadata": { "promptTokenCount": ask.prompt_words, "totalTokenCount": ask.prompt_words } });
            return Ok(json_response(200, &blocked, None));
        }
        Fault::Reset => return Err(std::io::Error::other("connection reset")),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        _ => {}
    }
    let mut answer = brain(&ask);
    if fault == Fault::Filter {
        // Anthropic: a refusal is a successful answer with its own stop reason.
        answer.pieces = vec!["I can't help with that.".into()];
        answer.tool_call = None;
        answer.finish = "refusal";
    }
    if !stream {
        if fault == Fault::SlowFirst {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        let mut b = wire::body(wire, &model, &answer);
        if fault == Fault::Filter
            && let Some(o) = b.as_object_mut()
        {
            o.insert("stop_reason".into(), json!("refusal"));
        }
        return Ok(json_response(200, &b, None));
    }
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let mut frames = wire::frames(wire, &model, &answer, include_usage && fault != Fault::Bare);
    if fault == Fault::Filter {
        for f in &mut frames.head {
            *f = f.replace("\"end_turn\"", "\"refusal\"");
        }
        for f in &mut frames.tail {
            *f = f.replace("\"end_turn\"", "\"refusal\"");
        }
    }
    let thinking = wire::thinking(wire, &model, "Considering the question. ");
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    tokio::spawn(async move {
        let send = |s: String| tx.send(Ok(Frame::data(Bytes::from(s))));
        let wire::Frames { head, tail, end } = frames;
        // Where in the output a midway fault strikes: after the first frame
        // and half of the rest.
        let midway = 1 + head.len().saturating_sub(1) / 2;
        match fault {
            Fault::SlowFirst => tokio::time::sleep(Duration::from_millis(1_500)).await,
            Fault::Thinks => {
                for _ in 0..6 {
                    if send(thinking.clone()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            _ => {}
        }
        for (i, f) in head.into_iter().enumerate() {
            if i > 0 {
                let (first, mid) = (i == 1, i == midway);
                match fault {
                    Fault::Stall if first => return tokio::time::sleep(Duration::from_secs(60)).await,
                    Fault::StallMidway if mid => return tokio::time::sleep(Duration::from_secs(60)).await,
                    Fault::Cut if first => return cut(&tx).await,
                    Fault::CutMidway if mid => return cut(&tx).await,
                    Fault::Malformed(n) if first => {
                        for _ in 0..n {
                            let _ = send("data: {\"choices\": [{\"delta\": \n\n".to_owned()).await;
                        }
                    }
                    _ => {}
                }
            }
            if send(f).await.is_err() {
                return;
            }
        }
        if fault == Fault::Truncated {
            return;
        }
        for f in tail {
            if send(f).await.is_err() {
                return;
            }
        }
        if let Some(end) = end
            && !matches!(fault, Fault::NoEnd | Fault::Bare)
        {
            let _ = send(end).await;
        }
    });
    let body =
        StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(body))
        .expect("a valid response"))
}
