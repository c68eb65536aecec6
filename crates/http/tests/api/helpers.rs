//! The server start-up every module shares: the real server on port 0 over
//! a fresh test database, with test settings.

use modelroute_app::{BootstrapReport, Reloader, Services, Settings};
use modelroute_db::testing::TestDb;
use modelroute_http::Application;
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
