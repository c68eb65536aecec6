//! Rate limits per API key and per org: in-process by default, shared
//! through Redis across server instances, failing open or closed when Redis
//! is down. Uses the Redis at 127.0.0.1:6379 (`.ci/run` starts it), each
//! test under its own key prefix.

use hyper::{Method, StatusCode};
use modelroute_app::Settings;
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_identity::{LimitBackend, RateLimitConfig};

use crate::helpers::{Reply, TestApp};

/// The server with one worker and `limits`.
async fn spawn(db: TestDb, limits: RateLimitConfig) -> TestApp {
    TestApp::spawn(db, |settings| with_limits(settings, limits)).await
}

fn with_limits(settings: &mut Settings, limits: RateLimitConfig) {
    settings.server.workers = 1;
    settings.identity.rate_limits = limits;
}

impl TestApp {
    /// The balance, asked of the instance at `port` with the bootstrap's key.
    async fn balance_at(&self, port: u16) -> Reply {
        self.send(Method::GET, &format!("http://127.0.0.1:{port}/v1/billing/balance"), Some(&self.key), None).await
    }
}

fn redis(prefix_of: &str, per_key: u32) -> RateLimitConfig {
    RateLimitConfig {
        backend: LimitBackend::Redis,
        key_prefix: format!("mr:test:{prefix_of}:{}:", uuid_like()),
        per_key_per_minute: per_key,
        ..RateLimitConfig::default()
    }
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

db_test!(async fn an_api_key_is_limited_with_headers_that_say_so(db) {
    let limits = RateLimitConfig { per_key_per_minute: 3, ..RateLimitConfig::default() };
    let app = spawn(db, limits).await;
    for left in [2, 1, 0] {
        let Reply { status, headers, .. } = app.balance_at(app.port).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], left.to_string().as_str());
    }
    let Reply { status, headers, json: body, .. } = app.balance_at(app.port).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
});

db_test!(async fn two_instances_sharing_redis_admit_no_more_than_the_limit_together(db) {
    let limits = redis("shared", 5);
    let app = spawn(db, limits).await;
    let (a, b) = (app.port, app.replica(|_| {}).await);
    let calls: Vec<_> = (0..16).map(|i| app.balance_at(if i % 2 == 0 { a } else { b })).collect();
    let statuses: Vec<StatusCode> = futures_util::future::join_all(calls).await.into_iter().map(|r| r.status).collect();
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((admitted, limited), (5, 11), "{statuses:?}");
});

db_test!(async fn redis_down_fails_open_or_closed_as_configured(db) {
    let down = |fail_open| RateLimitConfig {
        redis_url: "redis://127.0.0.1:1".into(),
        fail_open,
        ..redis("down", 1)
    };
    let app = spawn(db, down(true)).await;
    for _ in 0..3 {
        assert_eq!(app.balance_at(app.port).await.status, StatusCode::OK, "fail open: unchecked, admitted");
    }
    let closed = app.replica(|settings| with_limits(settings, down(false))).await;
    let Reply { status, headers, body, .. } = app.balance_at(closed).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
});
