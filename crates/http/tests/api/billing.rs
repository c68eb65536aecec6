//! Stripe top-ups over HTTP, the real server on port 0 and the Stripe
//! stand-in, on SQLite and PostgreSQL: Checkout through the API, signed
//! webhooks at `/v1/billing/stripe/webhook` delivered repeatedly and out of
//! order (credited once), bad signatures and stale timestamps (400, nothing
//! changes), auto top-up settings, and an alert emailed to the org's admins.

use hyper::{Method, StatusCode};
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_testkit::stripe::{SECRET_KEY, StripeStandIn, WEBHOOK_SECRET, signature, unix_now};
use modelroute_types::Secret;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp};

/// The server with the Stripe stand-in (configured when `stripe_on`).
struct App {
    app: TestApp,
    stripe: StripeStandIn,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl std::ops::DerefMut for App {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

async fn spawn(db: TestDb, stripe_on: bool) -> App {
    let stripe = StripeStandIn::start().await;
    let app = TestApp::spawn(db, |settings| {
        if stripe_on {
            settings.billing.stripe.secret_key = Secret::new(SECRET_KEY);
            settings.billing.stripe.webhook_secret = Secret::new(WEBHOOK_SECRET);
            settings.billing.stripe.api_base = stripe.base_url();
            settings.billing.stripe.check_interval_secs = 1;
        }
        settings.webhooks.allow_loopback = Some(true);
    })
    .await;
    App { app, stripe }
}

impl TestApp {
    /// A Stripe event delivered to the webhook, signed now unless `header` says otherwise.
    async fn webhook(&self, event: &Value, header: Option<String>) -> StatusCode {
        let body = event.to_string();
        let header = header.unwrap_or_else(|| signature(body.as_bytes(), WEBHOOK_SECRET, unix_now()));
        self.request(Method::POST, "/v1/billing/stripe/webhook", &[("stripe-signature", header)], body).await.status
    }

    /// The available balance in nano-USD, as the API shows it.
    async fn available_nanos(&self) -> i64 {
        self.get("/v1/billing/balance").await.json["available"]["nano_usd"].as_i64().unwrap()
    }
}

db_test!(async fn a_top_up_is_credited_once_from_signed_webhooks_only(db) {
    let app = spawn(db, true).await;
    let start = app.available_nanos().await;
    let Reply { status, json: session, .. } = app.api(Method::POST, "/v1/billing/checkout", &json!({ "amount": "25.00" })).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert!(session["url"].as_str().unwrap().starts_with("https://checkout.stripe.com/"));
    let Reply { status, json: err, .. } = app.api(Method::POST, "/v1/billing/checkout", &json!({ "amount": "1.00" })).await;
    assert_eq!((status, err["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("amount")));

    let events = app.stripe.pay_session(session["id"].as_str().unwrap());
    let body = events[0].to_string();
    for bad in [
        Some(signature(body.as_bytes(), "whsec_wrong", unix_now())),
        Some(signature(body.as_bytes(), WEBHOOK_SECRET, unix_now() - 400)),
        Some("t=1,v1=00".to_owned()),
        Some(String::new()),
    ] {
        assert_eq!(app.webhook(&events[0], bad).await, StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.available_nanos().await, start, "bad deliveries change nothing");
    for e in [&events[1], &events[0], &events[0], &events[1], &events[1]] {
        assert_eq!(app.webhook(e, None).await, StatusCode::OK);
    }
    assert_eq!(app.available_nanos().await - start, 25_000_000_000, "$25 exactly once");
    let verify = app.services.verify_ledger().await.unwrap();
    assert!(verify.violations.is_empty(), "{:?}", verify.violations);
});

db_test!(async fn auto_top_up_over_http_and_a_failure_is_emailed_to_the_owners(db) {
    let mut app = spawn(db, true).await;
    // An org with a person in it (the bootstrap org has none), and a key for it.
    let services = app.services.clone();
    let id = &services.identity;
    let actor = modelroute_identity::Actor::default();
    id.sign_up("owner@example.com", "correct horse battery staple", "Owner", &actor).await.unwrap();
    let mail = id.outbox("owner@example.com").await.unwrap();
    let token = mail[0].body.split("token=").nth(1).unwrap()[..64].to_owned();
    let owner = id.verify_email(&token, &actor).await.unwrap();
    let (org, project) = services.create_org("Owned", Some(&owner.id), &actor).await.unwrap();
    app.key = id.create_api_key(&org.id, &project.id, "k", &modelroute_identity::Scopes::all(), None).await.unwrap().1;

    // The org's webhook endpoint hears of it too.
    let receiver = modelroute_testkit::receiver::Receiver::start().await;
    let hook = json!({ "url": receiver.url("/ok"), "event_types": ["billing.auto_top_up_failed"] });
    assert_eq!(app.api(Method::POST, "/v1/webhook-endpoints", &hook).await.status, StatusCode::CREATED);

    let Reply { status, json: err, .. } = app.api(Method::PUT, "/v1/billing/auto-top-up", &json!({ "enabled": true, "threshold": "20", "amount": "50" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no payment method yet: {err}");
    let Reply { status, json: setup, .. } = app.api(Method::POST, "/v1/billing/payment-method", &Value::Null).await;
    assert_eq!(status, StatusCode::CREATED, "{setup}");
    let saved = app.stripe.confirm_setup(setup["client_secret"].as_str().unwrap(), "pm_card_chargeDeclined");
    assert_eq!(app.webhook(&saved, None).await, StatusCode::OK);
    let Reply { status, json: on, .. } = app.api(Method::PUT, "/v1/billing/auto-top-up", &json!({ "enabled": true, "threshold": "20", "amount": "50" })).await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["has_payment_method"], true);
    // The server checks balances every second here: $0 is below $20, the card
    // is declined, auto top-up goes off and the owner is emailed.
    let mut told = false;
    for _ in 0..100 {
        told = id.outbox("owner@example.com").await.unwrap().iter().any(|m| m.kind == "auto_top_up_failed");
        if told {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(told, "the owner was emailed");
    let mut events = Vec::new();
    for _ in 0..100 {
        events = receiver.requests("/ok");
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(events.len(), 1, "one webhook event");
    let event: Value = serde_json::from_slice(&events[0].body).unwrap();
    assert_eq!((event["type"].as_str(), event["data"]["reason"].as_str()), (Some("billing.auto_top_up_failed"), Some("card_declined")));
    let Reply { json: after, .. } = app.api(Method::GET, "/v1/billing/auto-top-up", &Value::Null).await;
    assert_eq!((after["enabled"].as_bool(), after["last_failure"].as_str()), (Some(false), Some("card_declined")));
    assert_eq!(app.stripe.created("payment_intent"), 1);
});

db_test!(async fn without_stripe_the_billing_endpoints_say_manual_credits(db) {
    let app = spawn(db, false).await;
    let Reply { status, json: err, .. } = app.api(Method::POST, "/v1/billing/checkout", &json!({ "amount": "25.00" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"]["message"].as_str().unwrap().contains("manual-credits"), "{err}");
    let event = app.stripe.event("payment_intent.succeeded", &json!({}));
    assert_eq!(app.webhook(&event, None).await, StatusCode::NOT_FOUND);
});
