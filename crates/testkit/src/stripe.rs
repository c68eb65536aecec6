//! A stand-in for Stripe's API: the paths and form-encoded bodies the
//! async-stripe client sends (`/v1/checkout/sessions`, `/v1/customers`,
//! `/v1/setup_intents`, `/v1/payment_intents`), answers shaped like Stripe's
//! objects, `Idempotency-Key` honoured as Stripe does, and test cards chosen
//! by payment method id: `pm_card_visa` pays, `pm_card_chargeDeclined` and
//! `pm_card_authenticationRequired` fail with Stripe's 402 `card_error`s.
//! It also makes webhook events and delivers them signed exactly as Stripe
//! signs them (`Stripe-Signature: t=…,v1=HMAC-SHA256("{t}.{body}")`).

// Reading a `serde_json::Value` by key yields `Null` when absent, and the
// objects written to are ones this module built: indexing cannot panic here.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The secret key the stand-in accepts.
pub const SECRET_KEY: &str = "sk_test_modelroute";
/// The webhook signing secret tests configure.
pub const WEBHOOK_SECRET: &str = "whsec_modelroute_test";

#[derive(Default)]
struct State {
    counter: u64,
    sessions: HashMap<String, Value>,
    customers: HashMap<String, Value>,
    setup_intents: HashMap<String, Value>,
    payment_intents: HashMap<String, Value>,
    idempotent: HashMap<String, (u16, Value)>,
    created: HashMap<&'static str, usize>,
}

/// A running Stripe stand-in. It stops when dropped.
pub struct StripeStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StripeStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeStandIn").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for StripeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_standin")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn now() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or_default()
}

/// `metadata[org_id]=x` → `{"org_id": "x"}`, for any `prefix[...]` group.
fn group(form: &HashMap<String, String>, prefix: &str) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in form {
        if let Some(key) = k.strip_prefix(&format!("{prefix}[")).and_then(|r| r.strip_suffix(']'))
            && !key.contains('[')
        {
            map.insert(key.to_owned(), json!(v));
        }
    }
    Value::Object(map)
}

fn card_error(code: &str, message: &str) -> (u16, Value) {
    (
        402,
        json!({ "error": { "type": "card_error", "code": code, "decline_code": if code == "card_declined" { "generic_decline" } else { "" }, "message": message } }),
    )
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_standin{:06}", self.counter)
    }

    fn handle(&mut self, path: &str, f: &HashMap<String, String>) -> (u16, Value) {
        let get = |k: &str| f.get(k).cloned();
        match path {
            "/v1/checkout/sessions" => {
                let id = self.id("cs_test");
                let amount: i64 =
                    get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse().ok()).unwrap_or_default();
                let quantity: i64 = get("line_items[0][quantity]").and_then(|q| q.parse().ok()).unwrap_or(1);
                let session = json!({
                    "id": id, "object": "checkout.session", "livemode": false,
                    "url": format!("https://checkout.stripe.com/c/pay/{id}"),
                    "mode": get("mode").unwrap_or_default(), "status": "open", "payment_status": "unpaid",
                    "amount_total": amount * quantity, "currency": get("line_items[0][price_data][currency]"),
                    "client_reference_id": get("client_reference_id"), "metadata": group(f, "metadata"),
                    "payment_intent_metadata": group(f, "payment_intent_data[metadata"),
                    "success_url": get("success_url"), "cancel_url": get("cancel_url"),
                    "created": now(), "expires_at": now() + 86_400,
                    "automatic_tax": { "enabled": false, "liability": null, "provider": null, "status": null },
                    "custom_fields": [], "custom_text": { "after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null },
                    "payment_method_types": ["card"], "shipping_options": [],
                });
                *self.created.entry("checkout_session").or_default() += 1;
                self.sessions.insert(id, session.clone());
                (200, session)
            }
            "/v1/customers" => {
                let id = self.id("cus");
                let customer = json!({ "id": id, "object": "customer", "created": now(), "livemode": false, "metadata": group(f, "metadata") });
                *self.created.entry("customer").or_default() += 1;
                self.customers.insert(id, customer.clone());
                (200, customer)
            }
            "/v1/setup_intents" => {
                let id = self.id("seti");
                let intent = json!({
                    "id": id, "object": "setup_intent", "client_secret": format!("{id}_secret_standin"),
                    "created": now(), "livemode": false, "payment_method_types": ["card"],
                    "status": "requires_payment_method", "usage": get("usage").unwrap_or_else(|| "off_session".into()),
                    "customer": get("customer"), "metadata": group(f, "metadata"),
                });
                *self.created.entry("setup_intent").or_default() += 1;
                self.setup_intents.insert(id, intent.clone());
                (200, intent)
            }
            "/v1/payment_intents" => {
                *self.created.entry("payment_intent").or_default() += 1;
                match get("payment_method").as_deref() {
                    Some("pm_card_chargeDeclined") => card_error("card_declined", "Your card was declined."),
                    Some("pm_card_authenticationRequired") => {
                        card_error("authentication_required", "This payment requires authentication.")
                    }
                    method => {
                        let id = self.id("pi");
                        let amount: i64 = get("amount").and_then(|a| a.parse().ok()).unwrap_or_default();
                        let intent = json!({
                            "id": id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
                            "amount_received": amount, "capture_method": "automatic", "confirmation_method": "automatic",
                            "created": now(), "currency": get("currency").unwrap_or_else(|| "usd".into()), "livemode": false,
                            "metadata": group(f, "metadata"), "payment_method_types": ["card"], "status": "succeeded",
                            "customer": get("customer"), "payment_method": method,
                        });
                        self.payment_intents.insert(id, intent.clone());
                        (200, intent)
                    }
                }
            }
            _ => (
                404,
                json!({ "error": { "type": "invalid_request_error", "message": format!("Unrecognized request URL (POST: {path})") } }),
            ),
        }
    }
}

impl StripeStandIn {
    /// Starts a stand-in on a free local port.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = crate::listen::serve(listener, move |req| {
            let state = Arc::clone(&shared);
            async move { serve(&state, req).await }
        });
        Self { addr, state, task }
    }

    /// The API base to configure (`[billing.stripe] api_base`).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many objects of a kind (`payment_intent`, `checkout_session`,
    /// `customer`, `setup_intent`) were created (idempotent replays excluded).
    #[must_use]
    pub fn created(&self, kind: &str) -> usize {
        self.state().created.get(kind).copied().unwrap_or(0)
    }

    /// A created Checkout Session.
    #[must_use]
    pub fn session(&self, id: &str) -> Option<Value> {
        self.state().sessions.get(id).cloned()
    }

    /// The events Stripe sends when the customer pays a Checkout Session:
    /// `checkout.session.completed` and `payment_intent.succeeded`, one
    /// payment intent between them.
    ///
    /// # Panics
    /// For an unknown session.
    #[must_use]
    pub fn pay_session(&self, session_id: &str) -> Vec<Value> {
        let mut s = self.state();
        let pi = s.id("pi");
        let session = s.sessions.get_mut(session_id).expect("a session of this stand-in");
        session["status"] = json!("complete");
        session["payment_status"] = json!("paid");
        session["payment_intent"] = json!(pi);
        let session = session.clone();
        let intent = json!({
            "id": pi, "object": "payment_intent", "amount": session["amount_total"], "amount_received": session["amount_total"],
            "currency": session["currency"], "status": "succeeded", "metadata": session["payment_intent_metadata"],
            "livemode": false, "created": now(),
        });
        let mut clean = session;
        if let Some(o) = clean.as_object_mut() {
            o.remove("payment_intent_metadata");
        }
        vec![s.event("checkout.session.completed", &clean), s.event("payment_intent.succeeded", &intent)]
    }

    /// `setup_intent.succeeded` for a SetupIntent confirmed with `payment_method`.
    ///
    /// # Panics
    /// For an unknown SetupIntent.
    #[must_use]
    pub fn confirm_setup(&self, client_secret: &str, payment_method: &str) -> Value {
        let mut s = self.state();
        let id = client_secret.split("_secret_").next().unwrap_or_default().to_owned();
        let intent = s.setup_intents.get_mut(&id).expect("a SetupIntent of this stand-in");
        intent["status"] = json!("succeeded");
        intent["payment_method"] = json!(payment_method);
        let intent = intent.clone();
        s.event("setup_intent.succeeded", &intent)
    }

    /// An event of `kind` about `object`, as Stripe shapes them.
    #[must_use]
    pub fn event(&self, kind: &str, object: &Value) -> Value {
        self.state().event(kind, object)
    }
}

impl State {
    fn event(&mut self, kind: &str, object: &Value) -> Value {
        let id = self.id("evt");
        json!({
            "id": id, "object": "event", "api_version": "2025-08-27.basil", "created": now(),
            "data": { "object": object }, "livemode": false, "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null }, "type": kind,
        })
    }
}

/// The `Stripe-Signature` header for `body` at unix time `t` under `secret`.
#[must_use]
pub fn signature(body: &[u8], secret: &str, t: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    format!("t={t},v1={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The current unix time (for signing).
#[must_use]
pub fn unix_now() -> i64 {
    now()
}

async fn serve(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorised =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SECRET_KEY}"));
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = req.uri().path().to_owned();
    let post = req.method() == hyper::Method::POST;
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !authorised {
        return reply(
            401,
            &json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided" } }),
        );
    }
    if !post {
        return reply(
            404,
            &json!({ "error": { "type": "invalid_request_error", "message": "only POSTs are stood in" } }),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = &key
        && let Some((status, body)) = s.idempotent.get(&format!("{path}|{k}"))
    {
        return reply(*status, body);
    }
    let (status, body) = s.handle(&path, &form);
    if let Some(k) = key {
        s.idempotent.insert(format!("{path}|{k}"), (status, body.clone()));
    }
    reply(status, &body)
}
