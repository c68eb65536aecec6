//! The server start-up the HTTP test files share: the real server on port
//! 0 over a fresh test database, with test settings.

#![allow(dead_code)] // each test file uses its own part of this module

use modelroute_app::{BootstrapReport, Services, Settings};
use modelroute_db::testing::TestDb;
use modelroute_http::Application;
use modelroute_types::Secret;

/// A running server.
pub(crate) struct Started {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its services (database, identity, ledger) for direct checks.
    pub(crate) services: Services,
    /// What the empty database was given: an org, a project, a key.
    pub(crate) bootstrap: BootstrapReport,
}

/// Starts the server over `db`, with `tweak` applied to the test settings.
pub(crate) async fn start(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> Started {
    let mut settings = Settings { database: db.config(), ..Settings::default() };
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.identity.server_secret = Secret::new("test-secret-0123456789abcdef-0123456789");
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("server starts");
    let started = Started {
        port: app.port(),
        services: app.services.clone(),
        bootstrap: app.bootstrap.clone().expect("an empty database is bootstrapped"),
    };
    tokio::spawn(app.run_until_stopped());
    started
}
