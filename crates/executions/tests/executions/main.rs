//! The executor as a library, without HTTP, on SQLite and PostgreSQL: the
//! built-in provider, the real ledger, a fresh database per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod asynchronous;

use std::sync::Arc;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection as _;
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, db_test};
use modelroute_executions::{Caller, ExecutionError, ExecutionStatus, Executor, RequestPreferences, StreamItem};
use modelroute_ledger::{Balance, CreditSource, Ledger as _, LedgerConfig, SqlLedger};
use modelroute_providers::{
    BuiltinConfig, BuiltinFailure, ChatRequest, Message, ProviderConfig, ProviderRegistry, Role,
};
use modelroute_routing::{Catalogue, CatalogueConfig, ErrorRules, Health, RoutingConfig};
use modelroute_types::{ApiKeyId, Money, OrgId, ProjectId};

async fn exec(db: &TestDb, sql: &str) {
    match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => c.batch_execute(sql).await.unwrap(),
        DbConn::Sqlite(mut c) => c.batch_execute(sql).await.unwrap(),
    }
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// The `id` column of what `sql` selects.
async fn ids(db: &TestDb, sql: &str) -> Vec<String> {
    use diesel_async::RunQueryDsl as _;
    let q = diesel::sql_query(sql);
    let ids: Vec<Id> = match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => q.load(&mut c).await.unwrap(),
        DbConn::Sqlite(mut c) => q.load(&mut c).await.unwrap(),
    };
    ids.into_iter().map(|i| i.id).collect()
}

/// The ids of the org's execution records, whatever their status.
async fn executions_of(db: &TestDb, org: &OrgId) -> Vec<modelroute_types::ExecutionId> {
    let ids = ids(db, &format!("SELECT id FROM executions WHERE org_id = '{org}'")).await;
    ids.into_iter().map(|i| i.parse().unwrap()).collect()
}

struct Setup {
    ledger: SqlLedger,
    executor: Executor<SqlLedger>,
    caller: Caller,
}

/// An org with a project and a key (bare rows: identity is not this crate's
/// business), `credit` on its balance, and an executor over the default
/// catalogue served by the built-in provider with `failure`.
async fn setup(db: &TestDb, failure: BuiltinFailure, credit: &str) -> Setup {
    let (org, project, key) = (OrgId::new(), ProjectId::new(), ApiKeyId::new());
    exec(
        db,
        &format!(
            "INSERT INTO orgs (id, name, created_at) VALUES ('{org}', 'o', '2026-01-01 00:00:00');
             INSERT INTO projects (id, org_id, name, created_at) VALUES ('{project}', '{org}', 'p', '2026-01-01 00:00:00');
             INSERT INTO api_keys (id, org_id, project_id, name, public_id, secret_hmac, scopes, created_at)
                 VALUES ('{key}', '{org}', '{project}', 'k', 'pub-{key}', 'x', 'execute', '2026-01-01 00:00:00')"
        ),
    )
    .await;
    let ledger = SqlLedger::open(db.pool().clone(), LedgerConfig::default()).await.unwrap();
    ledger.open_org_accounts(&org).await.unwrap();
    if credit != "0" {
        ledger.credit(&org, credit.parse().unwrap(), CreditSource::Grant, None).await.unwrap();
    }
    let builtin = BuiltinConfig { failure, chunk_delay_ms: 5, ..BuiltinConfig::default() };
    let providers = Arc::new(
        ProviderRegistry::from_config(&[("builtin".to_owned(), ProviderConfig::Builtin(builtin))].into()).unwrap(),
    );
    let catalogue = Arc::new(Catalogue::from_config(&CatalogueConfig::default(), |p| providers.contains(p)).unwrap());
    let routing = RoutingConfig::default();
    let executor = Executor::new(
        db.pool().clone(),
        ledger.clone(),
        catalogue,
        providers,
        Arc::new(Health::new(routing.breaker)),
        Arc::new(ErrorRules::new(routing.error_rules)),
        routing.retry,
    );
    let caller = Caller {
        org_id: org,
        project_id: project,
        api_key_id: key,
        preferences: RequestPreferences::default(),
        fallback_models: Vec::new(),
    };
    Setup { ledger, executor, caller }
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new("builtin/echo".into(), vec![Message::text(Role::User, text)])
}

async fn sound(ledger: &SqlLedger) {
    let report = ledger.verify().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

db_test!(async fn a_run_holds_the_worst_case_and_settles_what_the_route_prices_the_usage_at(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let done = s.executor.run(s.caller.clone(), ask("hello there")).await.unwrap();
    let route = s.executor.catalogue().models().next().unwrap().routes[0].clone();
    let usage = done.response.usage;
    assert_eq!(Some(done.cost), route.price_of(usage.input_tokens, usage.output_tokens));
    assert!(done.cost.is_positive());
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!(balance, Balance { available: Money::from_usd(1).checked_sub(done.cost).unwrap(), held: Money::ZERO });
    let record = s.executor.get(&s.caller.org_id, &done.execution_id).await.unwrap();
    assert_eq!((record.status, record.cost), (ExecutionStatus::Succeeded, Some(done.cost)));
    assert!(record.hold_amount >= done.cost, "the hold covered the cost");
    // The record names the journal entry that settled its hold (written in
    // the settlement's own commit on SQLite, after it on PostgreSQL).
    let id = &done.execution_id;
    let recorded = ids(&db, &format!("SELECT settlement_entry_id AS id FROM executions WHERE id = '{id}'")).await;
    let settled = format!("SELECT h.resolve_entry_id AS id FROM ledger_holds h JOIN executions e ON e.hold_id = h.id WHERE e.id = '{id}'");
    assert_eq!((recorded.len(), recorded), (1, ids(&db, &settled).await));
    // The decision record: the plan and the typed attempts.
    let decision = record.decision.unwrap();
    assert_eq!(decision["model"], "builtin/echo");
    assert_eq!(
        decision["attempts"],
        serde_json::json!([{ "route": route.public_id, "model": "builtin/echo", "outcome": "succeeded", "error_code": null }])
    );
    sound(&s.ledger).await;
});

db_test!(async fn a_balance_that_cannot_cover_the_worst_case_is_refused_and_nothing_is_written(db) {
    let s = setup(&db, BuiltinFailure::None, "0.000000001").await;
    let err = s.executor.run(s.caller.clone(), ask("hello")).await.unwrap_err();
    assert!(matches!(err, ExecutionError::Ledger(modelroute_ledger::LedgerError::InsufficientBalance { .. })), "{err:?}");
    assert!(executions_of(&db, &s.caller.org_id).await.is_empty(), "no execution record");
    assert_eq!(s.ledger.verify().await.unwrap().entries, 1, "only the credit");
});

db_test!(async fn a_failing_provider_releases_the_hold_and_records_the_failure(db) {
    let s = setup(&db, BuiltinFailure::BeforeResponse, "1").await;
    let err = s.executor.run(s.caller.clone(), ask("hello")).await.unwrap_err();
    assert!(matches!(err, ExecutionError::Upstream { .. }), "{err:?}");
    assert_eq!(s.ledger.balance(&s.caller.org_id).await.unwrap(), Balance { available: Money::from_usd(1), held: Money::ZERO });
    let ids = executions_of(&db, &s.caller.org_id).await;
    let record = s.executor.get(&s.caller.org_id, &ids[0]).await.unwrap();
    assert_eq!((record.status, record.cost), (ExecutionStatus::Failed, Some(Money::ZERO)));
    let attempts = record.decision.unwrap()["attempts"].as_array().unwrap().clone();
    assert!(!attempts.is_empty() && attempts.iter().all(|a| a["outcome"] == "failed"), "{attempts:?}");
    sound(&s.ledger).await;
});

db_test!(async fn a_stream_settles_on_its_end_and_a_cut_stream_is_never_a_success(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let mut stream = s.executor.start_stream(s.caller.clone(), ask("stream this please")).await.unwrap();
    let mut text = String::new();
    let cost = loop {
        match stream.events.recv().await.unwrap() {
            StreamItem::Delta(d) => text.push_str(&d),
            StreamItem::Done { cost, .. } => break cost,
            other => panic!("{other:?}"),
        }
    };
    assert!(!text.is_empty() && cost.is_positive());
    let record = s.executor.get(&s.caller.org_id, &stream.execution_id).await.unwrap();
    assert_eq!((record.status, record.cost), (ExecutionStatus::Succeeded, Some(cost)));

    let cut = setup(&db, BuiltinFailure::MidStream, "1").await;
    let mut stream = cut.executor.start_stream(cut.caller.clone(), ask("stream this please")).await.unwrap();
    let last = loop {
        match stream.events.recv().await.unwrap() {
            StreamItem::Delta(_) | StreamItem::ToolCallDelta(_) => {}
            other => break other,
        }
    };
    assert!(matches!(last, StreamItem::Failed(_)), "{last:?}");
    let record = cut.executor.get(&cut.caller.org_id, &stream.execution_id).await.unwrap();
    assert_eq!(record.status, ExecutionStatus::Failed);
    assert_eq!(cut.ledger.balance(&cut.caller.org_id).await.unwrap().held, Money::ZERO);
    sound(&cut.ledger).await;
});

db_test!(async fn another_orgs_execution_is_not_found(db) {
    let mine = setup(&db, BuiltinFailure::None, "1").await;
    let theirs = setup(&db, BuiltinFailure::None, "1").await;
    let done = mine.executor.run(mine.caller.clone(), ask("hello")).await.unwrap();
    assert!(matches!(theirs.executor.get(&theirs.caller.org_id, &done.execution_id).await, Err(ExecutionError::NotFound)));
    assert!(mine.executor.get(&mine.caller.org_id, &done.execution_id).await.is_ok());
});

db_test!(async fn recovery_ends_a_stopped_servers_execution_and_leaves_a_running_one(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let stopped = s.executor.run(s.caller.clone(), ask("one")).await.unwrap();
    let alive = s.executor.run(s.caller.clone(), ask("two")).await.unwrap();
    // As a stopped server leaves them: both records running; one hold
    // released (its lease lapsed and the sweeper ran), one still held.
    let held = s
        .ledger
        .hold(modelroute_ledger::HoldRequest {
            org_id: s.caller.org_id.clone(),
            amount: Money::from_units(1000),
            reference: "alive".into(),
            idempotency_key: None,
            expires_in: None,
        })
        .await
        .unwrap();
    exec(
        &db,
        &format!(
            "UPDATE executions SET status = 'running', created_at = '2026-01-01 00:00:00' WHERE id IN ('{}', '{}');
             UPDATE executions SET hold_id = '{}' WHERE id = '{}'",
            stopped.execution_id, alive.execution_id, held.id, alive.execution_id
        ),
    )
    .await;
    assert_eq!(s.executor.recover_interrupted(Duration::from_secs(1)).await.unwrap(), 1);
    let ended = s.executor.get(&s.caller.org_id, &stopped.execution_id).await.unwrap();
    assert_eq!((ended.status, ended.error_code.as_deref()), (ExecutionStatus::Failed, Some("interrupted")));
    assert_eq!(ended.cost, Some(stopped.cost), "it costs what its hold charged");
    let untouched = s.executor.get(&s.caller.org_id, &alive.execution_id).await.unwrap();
    assert_eq!(untouched.status, ExecutionStatus::Running);
    // Twice is once.
    assert_eq!(s.executor.recover_interrupted(Duration::from_secs(1)).await.unwrap(), 0);
});
