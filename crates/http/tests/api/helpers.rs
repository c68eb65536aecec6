//! The server start-up every module shares: the real server on port 0 over
//! a fresh test database, with test settings.

use std::borrow::Borrow;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelroute_app::{BootstrapReport, Reloader, Services, Settings};
use modelroute_db::testing::TestDb;
use modelroute_http::Application;
use modelroute_routing::RouteConfig;
use modelroute_types::{Money, OrgId, Secret};
use serde_json::Value;

/// The settings of a test server over `db`: port 0, two workers, a fixed secret.
pub(crate) fn test_settings(db: &TestDb) -> Settings {
    let mut settings = Settings { database: db.config(), ..Settings::default() };
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.identity.server_secret = Secret::new("test-secret-0123456789abcdef-0123456789");
    // Files in a folder of this test's own, removed with the app.
    settings.files.root = std::env::temp_dir().join(format!("mr_files_{}", OrgId::new()));
    settings
}

/// The HTTP client every test uses.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A running server over a test database of its own, and the client that
/// calls it. Modules add what they need in `impl TestApp` blocks of their own
/// (a browser session, a webhook, an execution's attempts).
pub(crate) struct TestApp {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// The bootstrap's API key (the owner of `org`).
    pub(crate) key: String,
    /// The bootstrap's org.
    pub(crate) org: OrgId,
    /// Its services (database, identity, ledger, executor) for direct checks.
    pub(crate) services: Services,
    /// What reloads its catalogue and providers.
    pub(crate) reloader: Reloader,
    /// The settings it started with.
    pub(crate) settings: Settings,
    client: HttpClient,
    /// The database, dropped (and removed) with the app.
    pub(crate) db: TestDb,
}

/// An answer: status, headers, the body as text and, when it is JSON, parsed
/// (`Value::Null` otherwise).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: String,
    pub(crate) json: Value,
}

impl Reply {
    /// The machine-readable error code, or "".
    pub(crate) fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    /// The error message (JSON-quoted), or "".
    pub(crate) fn message(&self) -> String {
        if self.json.is_null() { String::new() } else { self.json["error"]["message"].to_string() }
    }

    /// The `Location` header.
    pub(crate) fn location(&self) -> String {
        self.headers["location"].to_str().unwrap().to_owned()
    }

    /// The value of the cookie `name` that the answer sets (not when it clears it).
    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap().split_once('=').unwrap().1.to_owned())
            .filter(|v| !v.is_empty())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.settings.files.root);
    }
}

impl TestApp {
    /// Starts the server over `db` with the test settings, `tweak` applied.
    pub(crate) async fn spawn(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings(&db);
        tweak(&mut settings);
        Box::pin(Self::start(db, settings)).await
    }

    /// Starts the server over `db` with `settings` (from [`test_settings`]).
    pub(crate) async fn start(db: TestDb, settings: Settings) -> Self {
        let (port, services, reloader, bootstrap) = Box::pin(start_instance(settings.clone())).await;
        let bootstrap = bootstrap.expect("an empty database is bootstrapped");
        Self {
            port,
            key: bootstrap.token,
            org: bootstrap.org.id,
            services,
            reloader,
            settings,
            client: Client::builder(TokioExecutor::new()).build_http(),
            db,
        }
    }

    /// Starts another instance over the same database with this one's
    /// settings, `tweak` applied; answers its port.
    pub(crate) async fn replica(&self, tweak: impl FnOnce(&mut Settings)) -> u16 {
        let mut settings = self.settings.clone();
        tweak(&mut settings);
        let (port, _, _, bootstrap) = start_instance(settings).await;
        assert!(bootstrap.is_none(), "a replica finds the database bootstrapped");
        port
    }

    /// One request to `path` (or to an absolute URL) with `headers`; JSON
    /// content type unless `headers` name another.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let url = if path.starts_with('/') { format!("http://127.0.0.1:{}{path}", self.port) } else { path.to_owned() };
        let mut req = Request::builder().method(method).uri(url);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let res = self.client.request(req.body(Full::new(body.into())).unwrap()).await.expect("the server answers");
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.expect("a body").to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Reply { status, headers, body, json }
    }

    /// A request with `key` (none: anonymous) and `body`.
    pub(crate) async fn send(&self, method: Method, path: &str, key: Option<&str>, body: Option<String>) -> Reply {
        let auth: Vec<_> = key.map(|k| ("authorization", format!("Bearer {k}"))).into_iter().collect();
        self.request(method, path, &auth, body.unwrap_or_default()).await
    }

    /// A request with the bootstrap's key and a JSON body (none when `Null`).
    pub(crate) async fn api(&self, method: Method, path: &str, body: &Value) -> Reply {
        let body = if body.is_null() { None } else { Some(body.to_string()) };
        self.send(method, path, Some(&self.key), body).await
    }

    /// `GET path` with the bootstrap's key.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.api(Method::GET, path, &Value::Null).await
    }

    /// `POST path` with the bootstrap's key.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.api(Method::POST, path, body).await
    }

    /// `PUT path` with the bootstrap's key.
    pub(crate) async fn put(&self, path: &str, body: &Value) -> Reply {
        self.api(Method::PUT, path, body).await
    }

    /// A chat completion with the bootstrap's key.
    pub(crate) async fn chat(&self, body: impl Borrow<Value>) -> Reply {
        self.post("/v1/chat/completions", body.borrow()).await
    }

    /// The execution record `id`, as the API shows it.
    pub(crate) async fn execution(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/executions/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.json
    }

    /// The org's available balance, checking that no hold was left open.
    pub(crate) async fn available(&self) -> Money {
        let b = self.services.balance(&self.org).await.expect("a balance");
        assert_eq!(b.held, Money::ZERO, "a hold was left open");
        b.available
    }

    /// The public id of the `index`-th route of `slug`.
    pub(crate) fn public_route(&self, slug: &str, index: usize) -> String {
        self.services.catalogue.model(slug).expect("a model of the catalogue").routes[index].public_id.clone()
    }

    /// The operator's id of the route whose public id is `public` (breakers are kept by it).
    pub(crate) fn route_id(&self, public: &str) -> String {
        let mut routes = self.services.catalogue.models().flat_map(|m| m.routes.iter());
        routes.find(|r| r.public_id == public).expect("a route of the catalogue").id.clone()
    }

    /// A key of a second org.
    pub(crate) async fn other_key(&self) -> String {
        use modelroute_identity::{Actor, Scopes};
        let (other, _) = self.services.create_org("Other", None, &Actor::operator()).await.unwrap();
        let project = self.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
        self.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap().1
    }

    /// Fails unless `ledger verify` finds the ledger sound.
    pub(crate) async fn assert_ledger_sound(&self) {
        let report = self.services.verify_ledger().await.unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }
}

/// Starts an instance with `settings`; answers its port, services,
/// reloader and, for the first instance on a database, the bootstrap.
async fn start_instance(settings: Settings) -> (u16, Services, Reloader, Option<BootstrapReport>) {
    let app = Application::build(settings).await.expect("server starts");
    let parts = (app.port(), app.services.clone(), app.reloader(), app.bootstrap.clone());
    tokio::spawn(app.run_until_stopped());
    parts
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
