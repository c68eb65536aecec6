//! The whole platform as a library, without actix or any HTTP: settings,
//! the wired services, the first-start bootstrap, a paid execution through
//! the executor, the background workers, and the ledger's own check.
//!
//! ```sh
//! cargo run -p modelroute-app --example embedded        # a SQLite file in a temporary folder
//! MODELROUTE_DATABASE__URL=postgres://postgres@127.0.0.1:5432/mydb cargo run -p modelroute-app --example embedded
//! ```

#![allow(clippy::print_stdout)]

use std::time::Duration;

use modelroute_app::{Background, Services, Settings};
use modelroute_executions::Caller;
use modelroute_ledger::Ledger as _;
use modelroute_providers::{ChatRequest, Message, Role};
use modelroute_types::Secret;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Defaults, then `modelroute.toml`, then MODELROUTE_* — the same as the server.
    let mut settings = Settings::load(None)?;
    if std::env::var_os("MODELROUTE_DATABASE__URL").is_none() {
        settings.database.url =
            modelroute_db::DatabaseUrl::new(format!("sqlite://{}/platform.db", dir.path().display()));
    }
    settings.identity.server_secret = Secret::new("example-secret-0123456789abcdef-0123456789");

    let services = Services::connect(&settings).await?;
    // An empty database gets an org, its default project, a key and the starting credit.
    let Some(first) = services.bootstrap(&settings).await? else {
        anyhow::bail!("the database already has orgs: point the example at an empty one");
    };
    println!("org {} with {} of credit", first.org.id, first.credit);

    // The sweeps, balance checks and mail run on the durable job queue.
    let background = Background::start(&services, &settings, "example")?;

    // A paid execution: hold the worst case, call the built-in provider, settle the cost.
    let caller = Caller {
        org_id: first.org.id.clone(),
        project_id: first.project.id.clone(),
        api_key_id: first.key.id.clone(),
        preferences: modelroute_executions::RequestPreferences::default(),
        fallback_models: Vec::new(),
    };
    let request = ChatRequest::new("builtin/echo".into(), vec![Message::text(Role::User, "Say hello")]);
    let done = services.executor.run(caller, request).await?;
    println!("{} answered {:?} for {}", done.execution_id, done.response.content, done.cost);

    let balance = services.ledger.balance(&first.org.id).await?;
    println!("available {}, held {}", balance.available, balance.held);
    let record = services.executor.get(&first.org.id, &done.execution_id).await?;
    println!("record: {:?} on route {:?}", record.status, record.route);

    tokio::time::sleep(Duration::from_millis(200)).await;
    background.shutdown().await;
    let report = services.verify_ledger().await?;
    println!("verify: {} entries, {} violations", report.entries, report.violations.len());
    anyhow::ensure!(report.violations.is_empty(), "the ledger is not sound: {:?}", report.violations);
    Ok(())
}
