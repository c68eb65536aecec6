//! The server start-up every module shares: the real server on port 0 over
//! a fresh test database, with test settings.

use modelroute_app::{BootstrapReport, Reloader, Services, Settings};
use modelroute_db::testing::TestDb;
use modelroute_http::Application;
use modelroute_routing::RouteConfig;
use modelroute_types::Secret;

/// The settings of a test server over `db`: port 0, two workers, a fixed secret.
pub(crate) fn test_settings(db: &TestDb) -> Settings {
    let mut settings = Settings { database: db.config(), ..Settings::default() };
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.identity.server_secret = Secret::new("test-secret-0123456789abcdef-0123456789");
    settings
}

/// A running server.
pub(crate) struct Started {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its services (database, identity, ledger) for direct checks.
    pub(crate) services: Services,
    /// What the empty database was given: an org, a project, a key.
    pub(crate) bootstrap: BootstrapReport,
}

/// Starts an instance with `settings`; answers its port, services,
/// reloader and, for the first instance on a database, the bootstrap.
pub(crate) async fn start_instance(settings: Settings) -> (u16, Services, Reloader, Option<BootstrapReport>) {
    let app = Application::build(settings).await.expect("server starts");
    let parts = (app.port(), app.services.clone(), app.reloader(), app.bootstrap.clone());
    tokio::spawn(app.run_until_stopped());
    parts
}

/// Starts the server over `db`, with `tweak` applied to the test settings.
pub(crate) async fn start(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> Started {
    let mut settings = test_settings(db);
    tweak(&mut settings);
    let (port, services, _, bootstrap) = start_instance(settings).await;
    Started { port, services, bootstrap: bootstrap.expect("an empty database is bootstrapped") }
}

/// One API call with `key` (and a JSON body, when given): the status and the body.
pub(crate) async fn call(
    port: u16,
    key: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (hyper::StatusCode, String) {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(ToString::to_string).unwrap_or_default())))
        .expect("a request");
    let res = client.request(req).await.expect("the server answers");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The JSON body of a `GET` with `key`.
pub(crate) async fn get_json(port: u16, key: &str, path: &str) -> serde_json::Value {
    let (_, body) = call(port, key, hyper::Method::GET, path, None).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The public id of the `index`-th route of `slug`.
pub(crate) fn public_route(services: &Services, slug: &str, index: usize) -> String {
    services.catalogue.model(slug).expect("a model of the catalogue").routes[index].public_id.clone()
}

/// The operator's id of the route whose public id is `public` (breakers are kept by it).
pub(crate) fn route_id(services: &Services, public: &str) -> String {
    let mut routes = services.catalogue.models().flat_map(|m| m.routes.iter());
    routes.find(|r| r.public_id == public).expect("a route of the catalogue").id.clone()
}

/// `org`'s available balance, checking that no hold was left open.
pub(crate) async fn available(services: &Services, org: &modelroute_types::OrgId) -> modelroute_types::Money {
    let b = services.balance(org).await.expect("a balance");
    assert_eq!(b.held, modelroute_types::Money::ZERO, "a hold was left open");
    b.available
}

/// Settings of a provider served by `standin`: 5 s timeouts, 64 calls at once.
pub(crate) fn standin_config(standin: &modelroute_testkit::StandIn) -> modelroute_providers::HttpConfig {
    modelroute_providers::HttpConfig {
        timeout_ms: 5_000,
        stream_idle_timeout_ms: 5_000,
        max_concurrency: 64,
        ..modelroute_providers::HttpConfig::new(standin.base_url(), Secret::new(modelroute_testkit::TEST_KEY))
    }
}

/// A route of a test catalogue: `input` and `output` USD per million tokens, 256 tokens out at most.
pub(crate) fn route(id: &str, provider: &str, upstream: &str, input: &str, output: &str) -> RouteConfig {
    let price = |usd: &str| serde_json::from_value(serde_json::json!(usd)).expect("a price");
    RouteConfig { max_output_tokens: 256, ..RouteConfig::new(id, provider, upstream, price(input), price(output)) }
}
