//! Webhooks as a library, on both backends, against a local receiver: the
//! signature (checked with the Standard Webhooks reference verifier from
//! PyPI too), retries on the schedule, 410, redirects, timeouts, the alert
//! and the disabling, rotation, another org's ids, and the outbound policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel_async::RunQueryDsl as _;
use modelroute_db::schema::orgs;
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, DbPool, db_test};
use modelroute_types::{OrgId, WebhookDeliveryId, WebhookEndpointId, time};
use modelroute_webhooks::outbound::Policy;
use modelroute_webhooks::{Attempted, EndpointUpdate, NewEndpoint, WebhookError, Webhooks, WebhooksConfig, signature};
use serde_json::json;

use modelroute_testkit::receiver::{self, Receiver};

const LOCAL: Policy = Policy { allow_loopback: true, allow_private: false };

async fn org(pool: &DbPool) -> OrgId {
    use diesel::ExpressionMethods as _;
    let id = OrgId::new();
    let values = (orgs::id.eq(id.as_str()), orgs::name.eq("test org"), orgs::created_at.eq(time::now()));
    match pool.get().await.unwrap() {
        DbConn::Postgres(mut c) => diesel::insert_into(orgs::table).values(values).execute(&mut *c).await.unwrap(),
        DbConn::Sqlite(mut c) => diesel::insert_into(orgs::table).values(values).execute(&mut *c).await.unwrap(),
    };
    id
}

fn webhooks(db: &TestDb, policy: Policy, tweak: impl FnOnce(&mut WebhooksConfig)) -> Webhooks {
    let mut config = WebhooksConfig { timeout_secs: 1, jitter_percent: 0, ..WebhooksConfig::default() };
    tweak(&mut config);
    Webhooks::new(db.pool().clone(), config, &[9; 32], policy).unwrap()
}

fn endpoint(url: String) -> NewEndpoint {
    NewEndpoint { url, description: "test".into(), event_types: vec![] }
}

/// Far enough ahead that every retry is due.
fn later() -> NaiveDateTime {
    time::now() + chrono::Duration::days(30)
}

async fn one(w: &Webhooks, org: &OrgId, event: &str) -> WebhookDeliveryId {
    let mut ids = w.emit(org, event, &json!({ "execution_id": "exec_1", "status": "succeeded" })).await.unwrap();
    assert_eq!(ids.len(), 1);
    ids.remove(0)
}

db_test!(async fn a_delivery_is_signed_verifiable_and_recorded(db) {
    let r = Receiver::start().await;
    let w = webhooks(&db, LOCAL, |_| {});
    let a = org(db.pool()).await;
    let (e, secret) = w.create_endpoint(&a, endpoint(r.url("/ok"))).await.unwrap();
    assert!(secret.starts_with("whsec_"));
    assert!(!format!("{e:?}").contains(&secret), "the endpoint never carries its secret");

    let id = one(&w, &a, "execution.succeeded").await;
    assert_eq!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Delivered);
    assert_eq!(w.attempt(&id, later()).await.unwrap(), Attempted::Skipped, "delivered once");
    let got = r.requests("/ok");
    assert_eq!(got.len(), 1);
    let req = &got[0];
    let (wid, ts, sig) = (req.header("webhook-id"), req.header("webhook-timestamp"), req.header("webhook-signature"));
    assert!(wid.starts_with("msg_"));
    let now = time::unix_seconds(time::now());
    assert!(signature::verify(&secret, &wid, ts.parse().unwrap(), &req.body, &sig, now, 300));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!((body["type"].as_str(), body["data"]["execution_id"].as_str()), (Some("execution.succeeded"), Some("exec_1")));
    // The reference implementation agrees.
    receiver::reference_verify(&secret, req).await;

    let (d, attempts) = w.delivery(&a, &id).await.unwrap();
    assert_eq!((d.status.as_str(), d.attempts, d.last_status), ("delivered", 1, Some(200)));
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].response_excerpt.as_deref(), Some("ok"));

    // A filter: an endpoint for failures only gets no success.
    w.update_endpoint(&a, &e.id, EndpointUpdate { event_types: Some(vec!["execution.failed".into()]), ..EndpointUpdate::default() })
        .await
        .unwrap();
    assert!(w.emit(&a, "execution.succeeded", &json!({})).await.unwrap().is_empty());
    assert_eq!(w.emit(&a, "execution.failed", &json!({})).await.unwrap().len(), 1);
    let bad = w
        .update_endpoint(&a, &e.id, EndpointUpdate { event_types: Some(vec!["execution.exploded".into()]), ..EndpointUpdate::default() })
        .await
        .unwrap_err();
    assert!(matches!(bad, WebhookError::InvalidInput { field: "event_types", .. }), "{bad}");
});

db_test!(async fn a_receiver_failing_three_times_gets_four_attempts_and_one_delivery(db) {
    let r = Receiver::start().await;
    let w = webhooks(&db, LOCAL, |_| {});
    let a = org(db.pool()).await;
    w.create_endpoint(&a, endpoint(r.url("/fail3"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    let schedule = w.config().retry_schedule_secs.clone();
    let mut due = time::now();
    for (n, secs) in schedule.iter().take(3).enumerate() {
        let started = time::now();
        let Attempted::Retry(next) = w.attempt(&id, due).await.unwrap() else { panic!("attempt {n} should fail") };
        let wait = (next - started).num_seconds();
        let expected = i64::try_from(*secs).unwrap();
        assert!((expected - 1..=expected + 1).contains(&wait), "attempt {n}: next in {wait} s, the schedule says {expected}");
        assert_eq!(w.attempt(&id, next - chrono::Duration::seconds(1)).await.unwrap(), Attempted::Skipped, "not due yet");
        assert!(w.due(next - chrono::Duration::seconds(1), 10).await.unwrap().is_empty());
        assert_eq!(w.due(next, 10).await.unwrap(), vec![id.clone()]);
        due = next;
    }
    assert_eq!(w.attempt(&id, due).await.unwrap(), Attempted::Delivered);
    assert_eq!(w.attempt(&id, later()).await.unwrap(), Attempted::Skipped);
    let (d, attempts) = w.delivery(&a, &id).await.unwrap();
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 4));
    let codes: Vec<_> = attempts.iter().map(|t| t.status_code).collect();
    assert_eq!(codes, vec![Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(r.requests("/fail3").len(), 4);
    let ids: Vec<_> = r.requests("/fail3").iter().map(|q| q.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "every attempt carries the same webhook-id");
});

db_test!(async fn a_receiver_that_is_down_follows_the_schedule_then_alerts_and_is_disabled(db) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let w = webhooks(&db, LOCAL, |c| c.disable_after_secs = 2);
    let a = org(db.pool()).await;
    let (e, _) = w.create_endpoint(&a, endpoint(format!("http://127.0.0.1:{closed}/hook"))).await.unwrap();
    let id = one(&w, &a, "execution.failed").await;
    let schedule = w.config().retry_schedule_secs.len();
    let mut outcomes = Vec::new();
    for _ in 0..=schedule {
        outcomes.push(w.attempt(&id, later()).await.unwrap());
    }
    assert!(outcomes[..schedule].iter().all(|o| matches!(o, Attempted::Retry(_))), "{outcomes:?}");
    assert_eq!(outcomes[schedule], Attempted::Failed { alert: true }, "the schedule ran out: the org is told once");
    let (d, attempts) = w.delivery(&a, &id).await.unwrap();
    assert_eq!((d.status.as_str(), attempts.len()), ("failed", schedule + 1));
    assert!(attempts.iter().all(|t| t.status_code.is_none() && t.error.as_deref().is_some_and(|e| e.starts_with("could not connect"))), "{attempts:?}");
    assert!(w.endpoint(&a, &e.id).await.unwrap().failing_since.is_some());

    // Still failing past disable_after_secs: disabled, and no more deliveries.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let id2 = one(&w, &a, "execution.failed").await;
    assert_eq!(w.attempt(&id2, later()).await.unwrap(), Attempted::Failed { alert: false }, "alerted already");
    let disabled = w.endpoint(&a, &e.id).await.unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason.as_deref(), Some("every delivery failed for too long"));
    assert!(w.emit(&a, "execution.failed", &json!({})).await.unwrap().is_empty());
    // Enabled again by the org: a clean slate.
    let again = w.update_endpoint(&a, &e.id, EndpointUpdate { enabled: Some(true), ..EndpointUpdate::default() }).await.unwrap();
    assert!(again.enabled && again.disabled_reason.is_none() && again.failing_since.is_none());
});

db_test!(async fn redirects_gone_and_hanging_receivers(db) {
    let r = Receiver::start().await;
    let w = webhooks(&db, LOCAL, |_| {});
    let a = org(db.pool()).await;

    let (redirecting, _) = w.create_endpoint(&a, endpoint(r.url("/redirect"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    assert!(matches!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Retry(_)));
    assert!(r.requests("/ok").is_empty(), "a redirect is never followed");
    let (d, _) = w.delivery(&a, &id).await.unwrap();
    assert_eq!(d.last_error.as_deref(), Some("answered 302 (redirects are not followed)"));
    w.delete_endpoint(&a, &redirecting.id).await.unwrap();
    assert!(matches!(w.delivery(&a, &id).await, Err(WebhookError::NotFound(_))), "deleted with its endpoint");

    let (gone, _) = w.create_endpoint(&a, endpoint(r.url("/gone"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    assert!(matches!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Failed { .. }));
    let e = w.endpoint(&a, &gone.id).await.unwrap();
    assert_eq!((e.enabled, e.disabled_reason.as_deref()), (false, Some("the endpoint answered 410 Gone")));
    w.delete_endpoint(&a, &gone.id).await.unwrap();

    w.create_endpoint(&a, endpoint(r.url("/hang"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    let started = std::time::Instant::now();
    assert!(matches!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Retry(_)));
    assert!(started.elapsed() < Duration::from_secs(3), "the time limit holds: {:?}", started.elapsed());
    let (d, attempts) = w.delivery(&a, &id).await.unwrap();
    assert_eq!(d.last_error.as_deref(), Some("timed out"));
    assert!(attempts[0].latency_ms >= 900, "{attempts:?}");
});

db_test!(async fn rotation_signs_with_both_secrets_during_the_grace_period(db) {
    let r = Receiver::start().await;
    let w = webhooks(&db, LOCAL, |_| {});
    let a = org(db.pool()).await;
    let (e, old) = w.create_endpoint(&a, endpoint(r.url("/ok"))).await.unwrap();
    let (rotated, new) = w.rotate_secret(&a, &e.id, Duration::from_secs(3600)).await.unwrap();
    assert_ne!(old, new);
    assert!(rotated.previous_secret_expires_at.is_some());
    let id = one(&w, &a, "execution.succeeded").await;
    assert_eq!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Delivered);
    let req = &r.requests("/ok")[0];
    let (wid, ts, sig) = (req.header("webhook-id"), req.header("webhook-timestamp").parse().unwrap(), req.header("webhook-signature"));
    let now = time::unix_seconds(time::now());
    assert_eq!(sig.split(' ').count(), 2);
    assert!(signature::verify(&old, &wid, ts, &req.body, &sig, now, 300));
    assert!(signature::verify(&new, &wid, ts, &req.body, &sig, now, 300));
    // No grace: the old secret stops at once.
    let (_, newest) = w.rotate_secret(&a, &e.id, Duration::ZERO).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    w.attempt(&id, time::now()).await.unwrap();
    let req = &r.requests("/ok")[1];
    let sig = req.header("webhook-signature");
    assert_eq!(sig.split(' ').count(), 1);
    let ts = req.header("webhook-timestamp").parse().unwrap();
    assert!(signature::verify(&newest, &req.header("webhook-id"), ts, &req.body, &sig, now, 300));
    assert!(!signature::verify(&new, &req.header("webhook-id"), ts, &req.body, &sig, now, 300));
});

db_test!(async fn another_org_s_ids_change_nothing(db) {
    let r = Receiver::start().await;
    let w = webhooks(&db, LOCAL, |_| {});
    let (a, b) = (org(db.pool()).await, org(db.pool()).await);
    let (e, _) = w.create_endpoint(&a, endpoint(r.url("/ok"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    let before = w.endpoint(&a, &e.id).await.unwrap();
    let nf = |r: Result<_, WebhookError>| assert!(matches!(r, Err(WebhookError::NotFound(_))));
    nf(w.endpoint(&b, &e.id).await.map(drop));
    nf(w.update_endpoint(&b, &e.id, EndpointUpdate { url: Some(r.url("/evil")), enabled: Some(false), ..EndpointUpdate::default() }).await.map(drop));
    nf(w.rotate_secret(&b, &e.id, Duration::ZERO).await.map(drop));
    nf(w.send_test(&b, &e.id).await.map(drop));
    nf(w.deliveries(&b, &e.id, None, 10).await.map(drop));
    nf(w.delivery(&b, &id).await.map(drop));
    nf(w.redeliver(&b, &id).await);
    nf(w.delete_endpoint(&b, &e.id).await);
    assert_eq!(w.endpoint(&a, &e.id).await.unwrap(), before);
    assert!(w.endpoints(&b).await.unwrap().is_empty());
    assert!(w.emit(&b, "execution.succeeded", &json!({})).await.unwrap().is_empty(), "b's events never reach a's endpoint");
    assert_eq!(w.deliveries(&a, &e.id, None, 10).await.unwrap().len(), 1);
    nf(w.endpoint(&a, &WebhookEndpointId::new()).await.map(drop));
});

db_test!(async fn the_strict_policy_refuses_the_platform_s_own_network(db) {
    let w = webhooks(&db, Policy::default(), |_| {});
    let a = org(db.pool()).await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.7/hook",
        "https://192.168.0.1/hook",
        "https://[::1]/hook",
        "http://example.com/hook",
        "not a url",
    ] {
        let e = w.create_endpoint(&a, endpoint(url.into())).await.unwrap_err();
        assert!(matches!(e, WebhookError::InvalidInput { field: "url", .. }), "{url}: {e}");
    }
    assert!(w.endpoints(&a).await.unwrap().is_empty());
    // A name that passes the URL check but resolves to loopback (DNS that
    // changed, or rebinding) is refused where it is connected to.
    let name = loopback_alias().expect("a name in /etc/hosts for 127.0.0.1 other than localhost");
    w.create_endpoint(&a, endpoint(format!("https://{name}:9/hook"))).await.unwrap();
    let id = one(&w, &a, "execution.succeeded").await;
    assert!(matches!(w.attempt(&id, time::now()).await.unwrap(), Attempted::Retry(_)));
    let (d, _) = w.delivery(&a, &id).await.unwrap();
    assert!(d.last_error.as_deref().unwrap_or_default().contains("may not call"), "{:?}", d.last_error);
});

db_test!(async fn a_url_stored_under_a_looser_policy_is_not_called_under_a_strict_one(db) {
    let r = Receiver::start().await;
    let a = org(db.pool()).await;
    let (e, _) = webhooks(&db, LOCAL, |_| {}).create_endpoint(&a, endpoint(r.url("/ok"))).await.unwrap();
    let strict = webhooks(&db, Policy::default(), |_| {});
    let id = one(&strict, &a, "execution.succeeded").await;
    assert_eq!(strict.attempt(&id, time::now()).await.unwrap(), Attempted::Failed { alert: false });
    assert!(r.requests("/ok").is_empty(), "never called");
    let (d, _) = strict.delivery(&a, &id).await.unwrap();
    assert!(d.last_error.as_deref().unwrap_or_default().contains("loopback"), "{:?}", d.last_error);
    assert!(strict.endpoint(&a, &e.id).await.unwrap().enabled);
});

/// A host name other than `localhost` that resolves to 127.0.0.1 only
/// (from /etc/hosts: the URL check does not know it, the resolver must).
fn loopback_alias() -> Option<String> {
    use std::net::ToSocketAddrs as _;
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts
        .lines()
        .filter(|l| l.trim_start().starts_with("127."))
        .flat_map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|n| !n.starts_with('#') && n != "localhost" && !n.ends_with(".localhost"))
        .find(|n| (n.as_str(), 9).to_socket_addrs().is_ok_and(|mut addrs| addrs.all(|a| a.ip().is_loopback())))
}
