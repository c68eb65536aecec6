//! A stand-in for Replicate's predictions API (an asynchronous provider):
//! prediction objects and their statuses (`starting → processing →
//! succeeded | failed | canceled`), `Prefer: wait=N`, cancel, problem-JSON
//! errors, outputs as URLs of files it serves itself, and webhooks signed the
//! way Replicate signs them (Standard Webhooks: `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` under the
//! `whsec_` secret of `GET /v1/webhooks/default/secret`).
//!
//! The model's name picks a behaviour, as the chat stand-ins' do:
//! - `fault-fail`: the prediction fails (`"error": "CUDA out of memory"`);
//! - `fault-no-callback`: no webhook is ever sent (only polling finds the end);
//! - `fault-twice`: the `completed` webhook is sent twice;
//! - `fault-out-of-order`: `completed` is sent before `start`;
//! - `fault-late`: `completed` is sent `late_ms` (input, default 2000) after the end;
//! - `fault-forged`: webhooks are signed with another secret;
//! - anything else: succeeds after `duration_ms` (input, default 100) with one PNG.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::hmac;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::TEST_KEY;

/// The webhook signing secret the stand-in uses (and serves).
pub const WEBHOOK_SECRET: &str = "whsec_c3RhbmQtaW4gcmVwbGljYXRlIHNpZ25pbmcga2V5IQ==";
/// What `fault-forged` signs with instead.
const FORGED_SECRET: &str = "whsec_Zm9yZ2VkIHNpZ25pbmcga2V5IG9mIGFuIGF0dGFja2VyIQ==";

/// The bytes every output file holds: a PNG signature and a body.
#[must_use]
pub fn output_png() -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend((0..4096u32).map(|i| u8::try_from(i % 251).unwrap_or(0)));
    data
}

/// A webhook the stand-in sent, as it sent it (for a test to replay).
#[derive(Clone, Debug)]
pub struct SentWebhook {
    /// Where it went.
    pub url: String,
    /// Its `webhook-id`.
    pub id: String,
    /// Its `webhook-timestamp`.
    pub timestamp: i64,
    /// Its `webhook-signature`.
    pub signature: String,
    /// Its body.
    pub body: String,
}

#[derive(Default)]
struct State {
    predictions: HashMap<String, Value>,
    sent: Vec<SentWebhook>,
    created: usize,
    cancels: usize,
    webhooks_sent: usize,
}

/// The stand-in; stops when dropped.
pub struct ReplicateStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ReplicateStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateStandIn").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for ReplicateStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Replicate's problem-JSON error.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
    answer(status, &json!({ "title": title, "detail": detail, "status": status.as_u16() }))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The Standard Webhooks signature header of a body.
#[must_use]
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap_or_default();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(format!("{id}.{timestamp}.").as_bytes());
    ctx.update(body);
    format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
}

impl ReplicateStandIn {
    /// Starts on a free local port.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = Arc::clone(&state);
        let task = crate::listen::serve(listener, move |req| handle(addr, Arc::clone(&shared), req));
        Self { addr, state, task }
    }

    /// The API root to configure as the provider's base URL.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The host (and port) its output files are served from.
    #[must_use]
    pub fn files_host(&self) -> String {
        self.addr.to_string()
    }

    /// A prediction as it stands.
    #[must_use]
    pub fn prediction(&self, id: &str) -> Option<Value> {
        self.state.lock().expect("lock").predictions.get(id).cloned()
    }

    /// Every webhook sent, in order.
    #[must_use]
    pub fn sent_webhooks(&self) -> Vec<SentWebhook> {
        self.state.lock().expect("lock").sent.clone()
    }

    /// Predictions created, cancels asked for, webhooks sent.
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.state.lock().expect("lock");
        (s.created, s.cancels, s.webhooks_sent)
    }
}

async fn handle(addr: SocketAddr, state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    if let Some(file) = path.strip_prefix("/files/") {
        return if method == Method::GET && file.ends_with(".png") {
            let mut r = Response::new(Full::new(Bytes::from(output_png())));
            r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("image/png"));
            r
        } else {
            problem(StatusCode::NOT_FOUND, "Not found", "no such file")
        };
    }
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TEST_KEY}") || v == format!("Token {TEST_KEY}"));
    if !authorized {
        return problem(StatusCode::UNAUTHORIZED, "Unauthenticated", "You did not pass a valid authentication token");
    }
    let wait = req
        .headers()
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("wait="))
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n.min(60));
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "webhooks", "default", "secret"]) => {
            answer(StatusCode::OK, &json!({ "key": WEBHOOK_SECRET }))
        }
        (Method::POST, ["v1", "models", owner, name, "predictions"]) => {
            create(addr, &state, &format!("{owner}/{name}"), &body, wait).await
        }
        (Method::POST, ["v1", "predictions"]) => {
            let version = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned));
            match version {
                Some(v) => create(addr, &state, &v, &body, wait).await,
                None => problem(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request", "version is required"),
            }
        }
        (Method::GET, ["v1", "predictions", id]) => match state.lock().expect("lock").predictions.get(*id) {
            Some(p) => answer(StatusCode::OK, p),
            None => problem(StatusCode::NOT_FOUND, "Not found", "The requested resource could not be found"),
        },
        (Method::POST, ["v1", "predictions", id, "cancel"]) => {
            let mut s = state.lock().expect("lock");
            s.cancels += 1;
            let Some(p) = s.predictions.get_mut(*id) else {
                return problem(StatusCode::NOT_FOUND, "Not found", "The requested resource could not be found");
            };
            if matches!(p["status"].as_str(), Some("starting" | "processing")) {
                p["status"] = json!("canceled");
                p["completed_at"] = json!(now_rfc3339());
            }
            answer(StatusCode::OK, p)
        }
        _ => problem(StatusCode::NOT_FOUND, "Not found", "The requested resource could not be found"),
    }
}

async fn create(
    addr: SocketAddr,
    state: &Arc<Mutex<State>>,
    model: &str,
    body: &[u8],
    wait: Option<u64>,
) -> Response<Full<Bytes>> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return problem(StatusCode::BAD_REQUEST, "Invalid JSON", "the body is not JSON");
    };
    let Some(input) = request.get("input").filter(|i| i.is_object()).cloned() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "Input validation failed", "input: input is required");
    };
    let id = format!("{:x}", rand_u64());
    let prediction = json!({
        "id": id,
        "model": model,
        "version": request.get("version").cloned().unwrap_or(Value::Null),
        "input": input,
        "logs": "",
        "output": null,
        "data_removed": false,
        "error": null,
        "status": "starting",
        "created_at": now_rfc3339(),
        "started_at": null,
        "completed_at": null,
        "urls": {
            "get": format!("http://{addr}/v1/predictions/{id}"),
            "cancel": format!("http://{addr}/v1/predictions/{id}/cancel"),
        },
        "metrics": {},
    });
    {
        let mut s = state.lock().expect("lock");
        s.created += 1;
        s.predictions.insert(id.clone(), prediction.clone());
    }
    let webhook = request.get("webhook").and_then(Value::as_str).map(str::to_owned);
    let filter: Vec<String> = request.get("webhook_events_filter").and_then(Value::as_array).map_or_else(
        || vec!["start".into(), "completed".into()],
        |a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
    );
    let run = tokio::spawn(run(addr, Arc::clone(state), id.clone(), model.to_owned(), webhook, filter));
    if let Some(secs) = wait {
        let _ = tokio::time::timeout(Duration::from_secs(secs), run).await;
    }
    let current = state.lock().expect("lock").predictions.get(&id).cloned().unwrap_or(prediction);
    answer(StatusCode::CREATED, &current)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn input_ms(state: &Arc<Mutex<State>>, id: &str, key: &str, default: u64) -> u64 {
    state.lock().expect("lock").predictions.get(id).and_then(|p| p["input"][key].as_u64()).unwrap_or(default)
}

async fn run(
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    id: String,
    model: String,
    webhook: Option<String>,
    filter: Vec<String>,
) {
    let fault = |f: &str| model.contains(f);
    let duration = input_ms(&state, &id, "duration_ms", 100);
    let set = |f: &dyn Fn(&mut Value)| -> Option<Value> {
        let mut s = state.lock().expect("lock");
        let p = s.predictions.get_mut(&id)?;
        if p["status"] == "canceled" {
            return None;
        }
        f(p);
        Some(p.clone())
    };
    let Some(started) = set(&|p| {
        p["status"] = json!("processing");
        p["started_at"] = json!(now_rfc3339());
    }) else {
        return;
    };
    let send = |event: &'static str, body: Value| {
        let (webhook, state) = (webhook.clone(), Arc::clone(&state));
        let secret = if fault("fault-forged") { FORGED_SECRET } else { WEBHOOK_SECRET };
        async move {
            if let Some(url) = webhook {
                let sent = deliver(&url, secret, &body, event).await;
                let mut s = state.lock().expect("lock");
                s.webhooks_sent += 1;
                s.sent.extend(sent);
            }
        }
    };
    let wants = |e: &str| filter.iter().any(|f| f == e);
    if wants("start") && !fault("fault-no-callback") && !fault("fault-out-of-order") {
        send("start", started.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(duration)).await;
    let Some(done) = set(&|p| {
        p["completed_at"] = json!(now_rfc3339());
        p["metrics"] = json!({ "predict_time": 0.1 });
        if model.contains("fault-fail") {
            p["status"] = json!("failed");
            p["error"] = json!("CUDA out of memory");
        } else {
            p["status"] = json!("succeeded");
            p["output"] = json!([format!("http://{addr}/files/{}.png", p["id"].as_str().unwrap_or("x"))]);
        }
    }) else {
        return;
    };
    if fault("fault-no-callback") || !wants("completed") {
        return;
    }
    if fault("fault-late") {
        tokio::time::sleep(Duration::from_millis(input_ms(&state, &id, "late_ms", 2000))).await;
    }
    send("completed", done.clone()).await;
    if fault("fault-twice") {
        send("completed", done).await;
    }
    if fault("fault-out-of-order") && wants("start") {
        send("start", started).await;
    }
}

/// Posts one signed webhook (errors are the receiver's business); answers
/// what it sent.
async fn deliver(url: &str, secret: &str, body: &Value, event: &str) -> Option<SentWebhook> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = body.to_string();
    let id = format!("msg_{:x}_{event}", rand_u64());
    let ts = unix_now();
    let signature = sign(secret, &id, ts, body.as_bytes());
    let sent = SentWebhook {
        url: url.to_owned(),
        id: id.clone(),
        timestamp: ts,
        signature: signature.clone(),
        body: body.clone(),
    };
    let request = Request::post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await;
    Some(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::Receiver;

    async fn call(method: Method, url: &str, body: Option<Value>, prefer: Option<&str>) -> (StatusCode, Value) {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder().method(method).uri(url).header("authorization", format!("Bearer {TEST_KEY}"));
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let res = client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn verify(q: &crate::receiver::Request) -> bool {
        let ts: i64 = q.header("webhook-timestamp").parse().unwrap();
        sign(WEBHOOK_SECRET, &q.header("webhook-id"), ts, &q.body) == q.header("webhook-signature")
    }

    async fn settle(r: &Receiver, n: usize) -> Vec<crate::receiver::Request> {
        for _ in 0..200 {
            if r.requests("/ok").len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.requests("/ok")
    }

    #[tokio::test]
    async fn a_prediction_runs_calls_back_signed_and_serves_its_output() {
        let s = ReplicateStandIn::start().await;
        let r = Receiver::start().await;
        let url = format!("{}/models/acme/img/predictions", s.base_url());
        let (status, p) =
            call(Method::POST, &url, Some(json!({ "input": { "prompt": "a cat" }, "webhook": r.url("/ok") })), None)
                .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(p["status"], "starting");
        let got = settle(&r, 2).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(verify));
        let done: Value = serde_json::from_slice(&got[1].body).unwrap();
        assert_eq!(done["status"], "succeeded");
        let (_, polled) = call(Method::GET, p["urls"]["get"].as_str().unwrap(), None, None).await;
        assert_eq!(polled["status"], "succeeded");
        let file = done["output"][0].as_str().unwrap();
        assert!(file.starts_with(&format!("http://{}/files/", s.files_host())));
        let (status, _) = call(Method::GET, &format!("{}/nope", s.base_url()), None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn wait_cancel_errors_and_faults() {
        let s = ReplicateStandIn::start().await;
        let r = Receiver::start().await;
        let base = s.base_url();
        let (_, p) = call(
            Method::POST,
            &format!("{base}/models/acme/img/predictions"),
            Some(json!({ "input": {} })),
            Some("wait=5"),
        )
        .await;
        assert_eq!(p["status"], "succeeded", "Prefer: wait answers at the end");
        let slow = json!({ "input": { "duration_ms": 5000 } });
        let (_, p) = call(Method::POST, &format!("{base}/models/acme/img/predictions"), Some(slow), None).await;
        let (_, canceled) = call(Method::POST, p["urls"]["cancel"].as_str().unwrap(), None, None).await;
        assert_eq!(canceled["status"], "canceled");
        let (_, p) = call(
            Method::POST,
            &format!("{base}/models/acme/fault-fail/predictions"),
            Some(json!({ "input": {} })),
            Some("wait=5"),
        )
        .await;
        assert_eq!((p["status"].as_str(), p["error"].as_str()), (Some("failed"), Some("CUDA out of memory")));
        let (status, e) =
            call(Method::POST, &format!("{base}/models/acme/img/predictions"), Some(json!({})), None).await;
        assert_eq!((status, e["status"].as_u64()), (StatusCode::UNPROCESSABLE_ENTITY, Some(422)));
        let (_, secret) = call(Method::GET, &format!("{base}/webhooks/default/secret"), None, None).await;
        assert_eq!(secret["key"], WEBHOOK_SECRET);

        let twice = json!({ "input": {}, "webhook": r.url("/ok"), "webhook_events_filter": ["completed"] });
        call(Method::POST, &format!("{base}/models/acme/fault-twice/predictions"), Some(twice), None).await;
        assert_eq!(settle(&r, 2).await.len(), 2, "completed twice");
        let forged = json!({ "input": {}, "webhook": r.url("/ok"), "webhook_events_filter": ["completed"] });
        call(Method::POST, &format!("{base}/models/acme/fault-forged/predictions"), Some(forged), None).await;
        let got = settle(&r, 3).await;
        assert!(!verify(&got[2]), "a forged signature does not verify");
        let none = json!({ "input": {}, "webhook": r.url("/ok") });
        let (_, p) = call(
            Method::POST,
            &format!("{base}/models/acme/fault-no-callback/predictions"),
            Some(none),
            Some("wait=5"),
        )
        .await;
        assert_eq!(p["status"], "succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.requests("/ok").len(), 3, "no callback at all");
        let unauthorized = Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>()
            .request(Request::get(format!("{base}/predictions/x")).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    }
}
