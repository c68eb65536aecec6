//! The ledger as a library, without the server: a prepaid balance that
//! can never be overspent.
//!
//! ```sh
//! cargo run -p modelroute-ledger --example prepaid                      # a SQLite file in a temporary folder
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/mydb cargo run -p modelroute-ledger --example prepaid
//! ```

#![allow(clippy::print_stdout)]

use diesel_async::SimpleAsyncConnection as _;
use modelroute_db::{DatabaseConfig, DatabaseUrl, DbConn, DbPool};
use modelroute_ledger::{CreditSource, HoldRequest, Ledger as _, LedgerConfig, LedgerError, SqlLedger};
use modelroute_types::{Money, OrgId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("modelroute-ledger-example-{}", std::process::id()));
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| format!("sqlite://{}/ledger.db", dir.display()));
    let pool = DbPool::connect(&DatabaseConfig { url: DatabaseUrl::new(url), ..DatabaseConfig::default() }).await?;
    pool.migrate().await?;

    // Orgs belong to the identity crate; the ledger only needs the row to exist.
    let org = OrgId::new();
    let insert = format!("INSERT INTO orgs (id, name, created_at) VALUES ('{org}', 'Example', CURRENT_TIMESTAMP)");
    match pool.get().await? {
        DbConn::Postgres(mut c) => c.batch_execute(&insert).await?,
        DbConn::Sqlite(mut c) => c.batch_execute(&insert).await?,
    }

    let ledger = SqlLedger::open(pool, LedgerConfig::default()).await?;
    let usd = |s: &str| s.parse::<Money>();
    ledger.credit(&org, usd("10.00")?, CreditSource::Grant, Some("welcome-credit".into())).await?;

    // Reserve the worst case before doing the work, settle the actual cost after.
    let job = |amount: Money, key: &str| HoldRequest {
        org_id: org.clone(),
        amount,
        reference: key.into(),
        idempotency_key: Some(key.into()),
        expires_in: None,
    };
    let hold = ledger.hold(job(usd("1.00")?, "job-1")).await?;
    let settled = ledger.settle(&hold.id, usd("0.25")?).await?;
    println!("job-1: held {}, charged {}, released {}", hold.amount, settled.charged, settled.released);

    // A hold the balance does not cover is refused, and nothing is written.
    match ledger.hold(job(usd("100.00")?, "job-2")).await {
        Err(LedgerError::InsufficientBalance { available, .. }) => println!("job-2: refused, {available} available"),
        other => println!("job-2: unexpected {other:?}"),
    }

    let balance = ledger.balance(&org).await?;
    println!("balance: {} available, {} held", balance.available, balance.held);
    let report = ledger.verify().await?;
    println!("verify: {} entries, {} violations", report.entries, report.violations.len());
    drop(std::fs::remove_dir_all(&dir));
    Ok(())
}
