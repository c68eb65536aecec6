//! Billing against the Stripe stand-in (`modelroute-testkit::stripe`), the
//! real async-stripe client pointed at it, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};

use diesel_async::RunQueryDsl;
use modelroute_billing::{Alert, Billing, BillingConfig, BillingError, Notifier, WebhookOutcome};
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, db_test};
use modelroute_ledger::{Ledger as _, LedgerConfig, SqlLedger};
use modelroute_testkit::stripe::{SECRET_KEY, StripeStandIn, WEBHOOK_SECRET, signature, unix_now};
use modelroute_types::{Money, OrgId, Secret};
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Told(Mutex<Vec<(OrgId, Alert)>>);

impl Notifier for Told {
    fn alert(&self, org: &OrgId, alert: &Alert) {
        self.0.lock().unwrap().push((org.clone(), alert.clone()));
    }
}

struct Setup {
    billing: Billing,
    ledger: SqlLedger,
    told: Arc<Told>,
    stripe: StripeStandIn,
    org: OrgId,
    db: TestDb,
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn config(stripe: &StripeStandIn) -> BillingConfig {
    let mut c = BillingConfig::default();
    c.stripe.secret_key = Secret::new(SECRET_KEY);
    c.stripe.webhook_secret = Secret::new(WEBHOOK_SECRET);
    c.stripe.api_base = stripe.base_url();
    c
}

async fn insert_org(db: &TestDb) -> OrgId {
    let org = OrgId::new();
    let q = format!("INSERT INTO orgs (id, name, created_at) VALUES ('{org}', 'Acme', CURRENT_TIMESTAMP)");
    match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => diesel::sql_query(q).execute(&mut c).await.unwrap(),
        DbConn::Sqlite(mut c) => diesel::sql_query(q).execute(&mut c).await.unwrap(),
    };
    org
}

async fn setup(db: TestDb) -> Setup {
    let stripe = StripeStandIn::start().await;
    let ledger = SqlLedger::open(db.pool().clone(), LedgerConfig::default()).await.unwrap();
    let org = insert_org(&db).await;
    ledger.open_org_accounts(&org).await.unwrap();
    let told = Arc::new(Told::default());
    let billing = Billing::new(db.pool().clone(), ledger.clone(), config(&stripe), told.clone()).unwrap();
    Setup { billing, ledger, told, stripe, org, db }
}

impl Setup {
    /// A second replica: its own `Billing` over the same database and Stripe.
    fn replica(&self) -> Billing {
        Billing::new(self.db.pool().clone(), self.ledger.clone(), config(&self.stripe), self.told.clone()).unwrap()
    }

    async fn deliver(&self, event: &Value) -> Result<WebhookOutcome, BillingError> {
        let body = event.to_string();
        self.billing.handle_webhook(body.as_bytes(), &signature(body.as_bytes(), WEBHOOK_SECRET, unix_now())).await
    }

    async fn available(&self) -> Money {
        self.ledger.balance(&self.org).await.unwrap().available
    }

    async fn sound(&self) {
        let report = self.ledger.verify().await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }
}

db_test!(async fn a_checkout_payment_credits_once_whatever_the_deliveries(db) {
    let s = setup(db).await;
    assert!(matches!(s.billing.checkout(&s.org, usd("2"), None).await, Err(BillingError::InvalidInput { field: "amount", .. })));
    assert!(matches!(s.billing.checkout(&s.org, usd("5.001"), None).await, Err(BillingError::InvalidInput { .. })));
    let checkout = s.billing.checkout(&s.org, usd("25"), Some("browser-retry-1")).await.unwrap();
    assert!(checkout.url.starts_with("https://checkout.stripe.com/"), "{}", checkout.url);
    // The same idempotency key: the same session, created once at Stripe.
    let again = s.billing.checkout(&s.org, usd("25"), Some("browser-retry-1")).await.unwrap();
    assert_eq!(again, checkout);
    assert_eq!(s.stripe.created("checkout_session"), 1);
    let session = s.stripe.session(&checkout.id).unwrap();
    assert_eq!(session["amount_total"], 2500);
    assert_eq!(session["metadata"]["org_id"], s.org.as_str());
    assert_eq!(s.available().await, Money::ZERO, "nothing before the webhook");

    let events = s.stripe.pay_session(&checkout.id);
    // Bad deliveries first: each refused, nothing changes.
    let body = events[0].to_string();
    let wrong_secret = signature(body.as_bytes(), "whsec_someone_else", unix_now());
    let stale = signature(body.as_bytes(), WEBHOOK_SECRET, unix_now() - 301);
    let tampered = body.replace("2500", "250000");
    let good_for_body = signature(body.as_bytes(), WEBHOOK_SECRET, unix_now());
    for (payload, header) in [(&body, &wrong_secret), (&body, &stale), (&tampered, &good_for_body), (&body, &String::new())] {
        let r = s.billing.handle_webhook(payload.as_bytes(), header).await;
        assert!(matches!(r, Err(BillingError::BadSignature(_))), "{r:?}");
    }
    assert_eq!(s.available().await, Money::ZERO);
    // Then the real events, out of order, each delivered 1 to 5 times.
    let deliveries = [&events[1], &events[0], &events[1], &events[1], &events[0], &events[1], &events[0], &events[1], &events[0]];
    let mut credited = 0;
    for e in deliveries {
        if let WebhookOutcome::Credited { amount, .. } = s.deliver(e).await.unwrap() {
            assert_eq!(amount, usd("25"));
            credited += 1;
        }
    }
    assert!(credited >= 1);
    assert_eq!(s.available().await, usd("25"), "credited exactly once");
    s.sound().await;
});

db_test!(async fn auto_top_up_pays_once_across_replicas(db) {
    let s = setup(db).await;
    assert!(matches!(
        s.billing.set_auto_top_up(&s.org, true, usd("5"), usd("20"), None).await,
        Err(BillingError::NoPaymentMethod)
    ));
    let secret = s.billing.setup_payment_method(&s.org).await.unwrap();
    assert_eq!(s.stripe.created("customer"), 1);
    let saved = s.deliver(&s.stripe.confirm_setup(&secret, "pm_card_visa")).await.unwrap();
    assert_eq!(saved, WebhookOutcome::PaymentMethodSaved(s.org.clone()));
    let settings = s.billing.set_auto_top_up(&s.org, true, usd("5"), usd("20"), None).await.unwrap();
    assert!(settings.enabled && settings.has_payment_method);

    // Below the threshold (0 < 5): two replicas check at once; one payment.
    let (a, b) = (s.billing.clone(), s.replica());
    let (ra, rb) = tokio::join!(a.check_balances(), b.check_balances());
    assert_eq!(ra.unwrap() + rb.unwrap(), 1);
    assert_eq!(s.stripe.created("payment_intent"), 1);
    assert_eq!(s.available().await, usd("20"));
    // Above the threshold now: nothing more.
    assert_eq!(s.billing.check_balances().await.unwrap(), 0);
    assert_eq!(s.stripe.created("payment_intent"), 1);
    // Stripe's webhook for that payment arrives later: already credited.
    let pi = s.stripe.event("payment_intent.succeeded", &json!({
        "id": "pi_standin000004", "object": "payment_intent", "amount_received": 2000, "currency": "usd",
        "status": "succeeded", "metadata": { "org_id": s.org.as_str(), "kind": "auto_top_up" },
    }));
    let _ = s.deliver(&pi).await.unwrap();
    assert_eq!(s.available().await, usd("20"));
    s.sound().await;
});

db_test!(async fn a_declined_card_turns_auto_top_up_off_and_tells_the_org(db) {
    let s = setup(db).await;
    for (card, reason) in [("pm_card_chargeDeclined", "card_declined"), ("pm_card_authenticationRequired", "authentication_required")] {
        let secret = s.billing.setup_payment_method(&s.org).await.unwrap();
        s.deliver(&s.stripe.confirm_setup(&secret, card)).await.unwrap();
        s.billing.set_auto_top_up(&s.org, true, usd("5"), usd("20"), None).await.unwrap();
        let before = s.stripe.created("payment_intent");
        assert_eq!(s.billing.check_balances().await.unwrap(), 0);
        assert_eq!(s.stripe.created("payment_intent"), before + 1, "one attempt");
        let settings = s.billing.auto_top_up(&s.org).await.unwrap();
        assert!(!settings.enabled, "{card}: turned off");
        assert_eq!(settings.last_failure.as_deref(), Some(reason));
        assert_eq!(s.billing.check_balances().await.unwrap(), 0);
        assert_eq!(s.stripe.created("payment_intent"), before + 1, "no retry while off");
        let told = s.told.0.lock().unwrap().clone();
        assert!(told.contains(&(s.org.clone(), Alert::AutoTopUpFailed { reason: reason.into() })), "{told:?}");
    }
    assert_eq!(s.available().await, Money::ZERO);
    assert_eq!(s.stripe.created("customer"), 1, "one Stripe customer per org");
});

db_test!(async fn a_low_balance_is_told_once_per_fall(db) {
    let s = setup(db).await;
    s.billing.set_auto_top_up(&s.org, false, Money::ZERO, Money::ZERO, Some(usd("1"))).await.unwrap();
    let lows = |s: &Setup| s.told.0.lock().unwrap().iter().filter(|(_, a)| matches!(a, Alert::LowBalance { .. })).count();
    s.billing.check_balances().await.unwrap();
    s.billing.check_balances().await.unwrap();
    assert_eq!(lows(&s), 1, "once while below");
    s.ledger.credit(&s.org, usd("5"), modelroute_ledger::CreditSource::Grant, None).await.unwrap();
    s.billing.check_balances().await.unwrap();
    s.ledger.adjust(&s.org, usd("-4.5"), "test", None).await.unwrap();
    s.billing.check_balances().await.unwrap();
    assert_eq!(lows(&s), 2, "again after recovering and falling");
});

db_test!(async fn a_balance_check_writes_only_where_something_changes(db) {
    let s = setup(db).await;
    let mut config = config(&s.stripe);
    config.low_balance_alert = usd("1");
    let billing = Billing::new(s.db.pool().clone(), s.ledger.clone(), config, s.told.clone()).unwrap();
    // Twenty orgs with money that never touched their billing settings,
    // and `s.org`, never configured either, with nothing.
    for _ in 0..20 {
        let org = insert_org(&s.db).await;
        s.ledger.credit(&org, usd("5"), modelroute_ledger::CreditSource::Grant, None).await.unwrap();
    }
    billing.check_balances().await.unwrap();
    billing.check_balances().await.unwrap();
    // Only the org below the default alert got a settings row (to claim its
    // alert, once); the others were read, not written.
    let rows: i64 = {
        use diesel::QueryDsl as _;
        use modelroute_db::schema::billing_settings::dsl::billing_settings;
        match s.db.pool().get().await.unwrap() {
            DbConn::Postgres(mut c) => billing_settings.count().get_result(&mut c).await.unwrap(),
            DbConn::Sqlite(mut c) => billing_settings.count().get_result(&mut c).await.unwrap(),
        }
    };
    assert_eq!(rows, 1);
    let told = s.told.0.lock().unwrap().clone();
    assert_eq!(told, [(s.org.clone(), Alert::LowBalance { available: Money::ZERO, threshold: usd("1") })]);
});

db_test!(async fn without_stripe_billing_is_manual_credits(db) {
    let s = setup(db).await;
    let manual = Billing::new(s.db.pool().clone(), s.ledger.clone(), BillingConfig::default(), s.told.clone()).unwrap();
    assert!(!manual.stripe_enabled());
    assert!(matches!(manual.checkout(&s.org, usd("25"), None).await, Err(BillingError::StripeOff)));
    assert!(matches!(manual.setup_payment_method(&s.org).await, Err(BillingError::StripeOff)));
    assert_eq!(manual.check_balances().await.unwrap(), 0);
});
