//! Rate limits per API key and per org: in-process by default, shared
//! through Redis across server instances, failing open or closed when Redis
//! is down. Uses the Redis at 127.0.0.1:6379 (`.ci/run` starts it), each
//! test under its own key prefix.

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use modelroute_app::Settings;
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_identity::{LimitBackend, RateLimitConfig};
use serde_json::Value;

fn settings(db: &TestDb, limits: RateLimitConfig) -> Settings {
    let mut settings = crate::helpers::test_settings(db);
    settings.server.workers = 1;
    settings.identity.rate_limits = limits;
    settings
}

/// Starts an instance; returns its port and, for the first on a database, the key.
async fn start(settings: Settings) -> (u16, Option<String>) {
    let (port, _, _, bootstrap) = crate::helpers::start_instance(settings).await;
    (port, bootstrap.map(|b| b.token))
}

async fn balance(port: u16, key: &str) -> (StatusCode, hyper::HeaderMap, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://127.0.0.1:{port}/v1/billing/balance"))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&body).unwrap())
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
    let (port, key) = start(settings(&db, limits)).await;
    let key = key.unwrap();
    for left in [2, 1, 0] {
        let (status, headers, _) = balance(port, &key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], left.to_string().as_str());
    }
    let (status, headers, body) = balance(port, &key).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
});

db_test!(async fn two_instances_sharing_redis_admit_no_more_than_the_limit_together(db) {
    let limits = redis("shared", 5);
    let (a, key) = start(settings(&db, limits.clone())).await;
    let (b, none) = start(settings(&db, limits)).await;
    assert!(none.is_none(), "the second instance finds the database bootstrapped");
    let key = key.unwrap();
    let calls: Vec<_> = (0..16).map(|i| balance(if i % 2 == 0 { a } else { b }, &key)).collect();
    let statuses: Vec<StatusCode> = futures_util::future::join_all(calls).await.into_iter().map(|r| r.0).collect();
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
    let (open, key) = start(settings(&db, down(true))).await;
    let key = key.unwrap();
    for _ in 0..3 {
        assert_eq!(balance(open, &key).await.0, StatusCode::OK, "fail open: unchecked, admitted");
    }
    let (closed, _) = start(settings(&db, down(false))).await;
    let (status, headers, body) = balance(closed, &key).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
});
