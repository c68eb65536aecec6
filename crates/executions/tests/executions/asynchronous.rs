//! Asynchronous executions as a library: exact admission at submission,
//! idempotency keys, cancels (queued, running, racing the end), deadlines,
//! and another org's ids.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use modelroute_db::db_test;
use modelroute_executions::{
    AsyncHooks, AsyncInput, ExecutionError, ExecutionEvent, ExecutionStatus, IdempotencyKey, Ran, Submission,
};
use modelroute_ledger::{CreditSource, Ledger as _};
use modelroute_providers::BuiltinFailure;
use modelroute_types::{ExecutionId, Money};

use crate::{Setup, ask, setup, sound};

fn submission(s: &Setup, text: &str) -> Submission {
    Submission {
        caller: s.caller.clone(),
        input: AsyncInput::Chat { request: ask(text) },
        deadline: Duration::from_secs(3600),
        webhook_url: None,
        webhook_events: Vec::new(),
        idempotency: None,
    }
}

/// Records every event the executor tells of.
fn record_events(s: &Setup) -> Arc<Mutex<Vec<ExecutionEvent>>> {
    let seen: Arc<Mutex<Vec<ExecutionEvent>>> = Arc::default();
    let sink = Arc::clone(&seen);
    s.executor.set_async_hooks(AsyncHooks {
        events: Arc::new(move |e| sink.lock().unwrap().push(e)),
        rehost: Arc::new(|_| -> BoxFuture<'static, Result<String, String>> {
            Box::pin(async { Err("no file store in this test".to_owned()) })
        }),
    });
    seen
}

db_test!(async fn a_submission_holds_until_its_run_streams_into_the_record_and_settles_once(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let events = record_events(&s);
    let submitted = s.executor.submit(submission(&s, "hello async world")).await.unwrap();
    let e = submitted.execution;
    assert!(!submitted.replayed);
    assert_eq!((e.status, e.mode.as_str(), e.cost), (ExecutionStatus::Queued, "async", None));
    assert!(e.deadline_at.is_some() && e.started_at.is_none());
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!(balance.held, e.hold_amount, "the worst case is held at submission");

    assert_eq!(s.executor.run_queued(&e.id).await.unwrap(), Ran::Ended);
    let done = s.executor.get(&s.caller.org_id, &e.id).await.unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{:?}", done.error_message);
    assert!(done.cost.unwrap().is_positive() && done.cost.unwrap() <= done.hold_amount);
    let text = done.output.as_ref().unwrap()["text"].as_str().unwrap().to_owned();
    assert!(!text.is_empty(), "the answer is kept in the record: {:?}", done.output);
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!(balance.held, Money::ZERO);
    assert_eq!(balance.available, Money::from_usd(1).checked_sub(done.cost.unwrap()).unwrap());

    // A second run (the job delivered twice) changes nothing.
    assert_eq!(s.executor.run_queued(&e.id).await.unwrap(), Ran::Ended);
    assert_eq!(s.ledger.balance(&s.caller.org_id).await.unwrap(), balance);
    let types: Vec<&str> = events.lock().unwrap().iter().map(|e| e.event_type).collect();
    assert_eq!(types.first(), Some(&"execution.started"));
    assert_eq!(types.last(), Some(&"execution.succeeded"));
    assert_eq!(types.iter().filter(|t| **t == "execution.succeeded").count(), 1, "{types:?}");
    sound(&s.ledger).await;
});

db_test!(async fn a_thousand_submissions_against_a_balance_for_a_hundred_admit_exactly_a_hundred(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    // The worst case of one submission, learnt by submitting and canceling it.
    let probe = s.executor.submit(submission(&s, "same prompt")).await.unwrap().execution;
    let worst = probe.hold_amount;
    s.executor.cancel(&s.caller.org_id, &probe.id).await.unwrap();
    let other = setup(&db, BuiltinFailure::None, "0").await;
    other
        .ledger
        .credit(&other.caller.org_id, Money::from_units(worst.units() * 100), CreditSource::Grant, None)
        .await
        .unwrap();

    let all = join_all((0..1000).map(|_| other.executor.submit(submission(&other, "same prompt")))).await;
    let admitted: Vec<ExecutionId> = all.iter().filter_map(|r| r.as_ref().ok()).map(|s| s.execution.id.clone()).collect();
    assert_eq!(admitted.len(), 100, "exactly what the balance covers, before any runs");
    for refused in all.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(refused, ExecutionError::Ledger(modelroute_ledger::LedgerError::InsufficientBalance { .. })), "{refused}");
    }
    let balance = other.ledger.balance(&other.caller.org_id).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::ZERO, Money::from_units(worst.units() * 100)));
    // Nothing refused was written.
    assert_eq!(crate::executions_of(&db, &other.caller.org_id).await.len(), 100);
    sound(&other.ledger).await;
});

db_test!(async fn an_idempotency_key_answers_the_same_execution_and_refuses_another_body(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let keyed = |hash: &str| Submission {
        idempotency: Some(IdempotencyKey { key: "k-1".into(), request_hash: hash.into() }),
        ..submission(&s, "hello")
    };
    let first = s.executor.submit(keyed("h1")).await.unwrap();
    let again = s.executor.submit(keyed("h1")).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.execution.id, again.execution.id);
    let other = s.executor.submit(keyed("h2")).await.unwrap_err();
    assert!(matches!(other, ExecutionError::IdempotencyMismatch), "{other}");
    assert_eq!(crate::executions_of(&db, &s.caller.org_id).await.len(), 1);

    // Twenty at once with a new key: one execution; the others answer it or
    // are told the first is still being admitted.
    let racing = || Submission {
        idempotency: Some(IdempotencyKey { key: "k-race".into(), request_hash: "h".into() }),
        ..submission(&s, "race")
    };
    let all = join_all((0..20).map(|_| s.executor.submit(racing()))).await;
    let new = all.iter().filter(|r| r.as_ref().is_ok_and(|s| !s.replayed)).count();
    assert_eq!(new, 1);
    for r in &all {
        match r {
            Ok(_) | Err(ExecutionError::IdempotencyInProgress) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(crate::executions_of(&db, &s.caller.org_id).await.len(), 2);

    // A refused admission withdraws its claim: the key can be used again.
    let poor = setup(&db, BuiltinFailure::None, "0").await;
    let k = || Submission {
        idempotency: Some(IdempotencyKey { key: "k-poor".into(), request_hash: "h".into() }),
        ..submission(&poor, "hello")
    };
    assert!(matches!(poor.executor.submit(k()).await, Err(ExecutionError::Ledger(_))));
    poor.ledger.credit(&poor.caller.org_id, Money::from_usd(1), CreditSource::Grant, None).await.unwrap();
    assert!(!poor.executor.submit(k()).await.unwrap().replayed);
    sound(&s.ledger).await;
});

db_test!(async fn canceled_while_queued_costs_nothing_and_a_late_run_does_nothing(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let events = record_events(&s);
    let e = s.executor.submit(submission(&s, "never mind")).await.unwrap().execution;
    let canceled = s.executor.cancel(&s.caller.org_id, &e.id).await.unwrap();
    assert_eq!((canceled.status, canceled.cost), (ExecutionStatus::Canceled, Some(Money::ZERO)));
    assert!(canceled.cancel_requested_at.is_some());
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::from_usd(1), Money::ZERO));
    assert_eq!(s.executor.run_queued(&e.id).await.unwrap(), Ran::Ended);
    assert_eq!(s.executor.get(&s.caller.org_id, &e.id).await.unwrap().status, ExecutionStatus::Canceled);
    // Canceling again answers it as it is.
    assert_eq!(s.executor.cancel(&s.caller.org_id, &e.id).await.unwrap().status, ExecutionStatus::Canceled);
    let types: Vec<&str> = events.lock().unwrap().iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["execution.canceled"]);
    sound(&s.ledger).await;
});

db_test!(async fn canceled_while_running_is_billed_for_what_the_provider_produced(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let long = "word ".repeat(400);
    let e = s.executor.submit(submission(&s, &long)).await.unwrap().execution;
    let executor = s.executor.clone();
    let id = e.id.clone();
    let run = tokio::spawn(async move { executor.run_queued(&id).await });
    // Some output first (5 ms a chunk).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = s.executor.cancel(&s.caller.org_id, &e.id).await.unwrap();
    assert!(asked.cancel_requested_at.is_some());
    run.await.unwrap().unwrap();
    let done = s.executor.get(&s.caller.org_id, &e.id).await.unwrap();
    assert_eq!(done.status, ExecutionStatus::Canceled);
    let cost = done.cost.unwrap();
    assert!(cost.is_positive() && cost < done.hold_amount, "{cost:?} of {:?}", done.hold_amount);
    let partial = done.output.as_ref().unwrap()["text"].as_str().unwrap().len();
    assert!(partial > 0 && partial < long.len(), "what was produced up to the cancel: {partial}");
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::from_usd(1).checked_sub(cost).unwrap(), Money::ZERO));
    sound(&s.ledger).await;
});

db_test!(async fn a_cancel_racing_the_end_ends_it_once(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let e = s.executor.submit(submission(&s, &format!("race {i}"))).await.unwrap().execution;
        let (executor, id) = (s.executor.clone(), e.id.clone());
        let run = tokio::spawn(async move { executor.run_queued(&id).await });
        tokio::time::sleep(Duration::from_millis(u64::try_from(i).unwrap() * 3)).await;
        s.executor.cancel(&s.caller.org_id, &e.id).await.unwrap();
        run.await.unwrap().unwrap();
        ids.push(e.id);
    }
    let mut charged = Money::ZERO;
    for id in &ids {
        let e = s.executor.get(&s.caller.org_id, id).await.unwrap();
        assert!(matches!(e.status, ExecutionStatus::Succeeded | ExecutionStatus::Canceled), "{:?}", e.status);
        charged = charged.checked_add(e.cost.unwrap()).unwrap();
    }
    let balance = s.ledger.balance(&s.caller.org_id).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::from_usd(1).checked_sub(charged).unwrap(), Money::ZERO));
    sound(&s.ledger).await;
});

db_test!(async fn a_deadline_that_passes_before_the_start_ends_it_unbilled(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let e = s
        .executor
        .submit(Submission { deadline: Duration::from_secs(1), ..submission(&s, "too late") })
        .await
        .unwrap()
        .execution;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.executor.run_queued(&e.id).await.unwrap(), Ran::Ended);
    let done = s.executor.get(&s.caller.org_id, &e.id).await.unwrap();
    assert_eq!((done.status, done.cost), (ExecutionStatus::Failed, Some(Money::ZERO)));
    assert_eq!(done.error_code.as_deref(), Some("deadline_exceeded"));
    assert_eq!(s.ledger.balance(&s.caller.org_id).await.unwrap().available, Money::from_usd(1));
    sound(&s.ledger).await;
});

db_test!(async fn another_orgs_execution_cannot_be_seen_waited_on_or_canceled(db) {
    let victim = setup(&db, BuiltinFailure::None, "1").await;
    let thief = setup(&db, BuiltinFailure::None, "1").await;
    let e = victim.executor.submit(submission(&victim, "mine")).await.unwrap().execution;
    let org = &thief.caller.org_id;
    assert!(matches!(thief.executor.cancel(org, &e.id).await, Err(ExecutionError::NotFound)));
    assert!(matches!(thief.executor.get(org, &e.id).await, Err(ExecutionError::NotFound)));
    assert!(matches!(thief.executor.wait(org, &e.id, Duration::from_millis(10)).await, Err(ExecutionError::NotFound)));
    let still = victim.executor.get(&victim.caller.org_id, &e.id).await.unwrap();
    assert_eq!((still.status, still.cancel_requested_at), (ExecutionStatus::Queued, None));
    assert_eq!(victim.ledger.balance(&victim.caller.org_id).await.unwrap().held, e.hold_amount);
});

db_test!(async fn an_input_object_for_a_chat_model_fails_unbilled_and_a_non_object_is_refused(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let input = |v| Submission {
        input: AsyncInput::Input { model: "builtin/echo".into(), input: v },
        ..submission(&s, "")
    };
    let refused = s.executor.submit(input(serde_json::json!("a string"))).await.unwrap_err();
    assert!(matches!(refused, ExecutionError::InvalidRequest { param: "input", .. }));
    let e = s.executor.submit(input(serde_json::json!({ "prompt": "draw" }))).await.unwrap().execution;
    s.executor.run_queued(&e.id).await.unwrap();
    let done = s.executor.get(&s.caller.org_id, &e.id).await.unwrap();
    assert_eq!((done.status, done.cost, done.error_code.as_deref()), (ExecutionStatus::Failed, Some(Money::ZERO), Some("invalid_request")));
    assert_eq!(s.ledger.balance(&s.caller.org_id).await.unwrap().available, Money::from_usd(1));
});

db_test!(async fn waiting_answers_at_the_end_or_when_the_time_is_up(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let e = s.executor.submit(submission(&s, "wait for me")).await.unwrap().execution;
    let waited = s.executor.wait(&s.caller.org_id, &e.id, Duration::from_millis(200)).await.unwrap();
    assert_eq!(waited.status, ExecutionStatus::Queued, "nothing runs it: the time is up");
    let (executor, id) = (s.executor.clone(), e.id.clone());
    let run = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        executor.run_queued(&id).await
    });
    let started = std::time::Instant::now();
    let waited = s.executor.wait(&s.caller.org_id, &e.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(waited.status, ExecutionStatus::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(10), "woken at the end, not at the time limit");
    run.await.unwrap().unwrap();
});

db_test!(async fn callbacks_are_recorded_even_unknown_and_purged_only_past_their_retention(db) {
    let s = setup(&db, BuiltinFailure::None, "1").await;
    let refused = s.executor.callback("builtin", "no-such-token", [Some("msg_1"), Some("1"), Some("v1,x")], b"{}").await.unwrap();
    assert_eq!(refused, Err(modelroute_executions::CallbackError::UnknownToken));
    let now = modelroute_types::time::now();
    assert_eq!(s.executor.purge_callbacks(now - chrono::Duration::days(90), 1000).await.unwrap(), 0, "a fresh record stays");
    assert_eq!(s.executor.purge_callbacks(now + chrono::Duration::seconds(1), 1000).await.unwrap(), 1);
    assert_eq!(s.executor.purge_callbacks(now + chrono::Duration::seconds(1), 1000).await.unwrap(), 0);
});

db_test!(async fn another_org_cannot_cancel_a_running_execution(db) {
    let victim = setup(&db, BuiltinFailure::None, "1").await;
    let thief = setup(&db, BuiltinFailure::None, "1").await;
    let e = victim.executor.submit(submission(&victim, &"word ".repeat(100))).await.unwrap().execution;
    let (executor, id) = (victim.executor.clone(), e.id.clone());
    let run = tokio::spawn(async move { executor.run_queued(&id).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(thief.executor.cancel(&thief.caller.org_id, &e.id).await, Err(ExecutionError::NotFound)));
    run.await.unwrap().unwrap();
    let done = victim.executor.get(&victim.caller.org_id, &e.id).await.unwrap();
    assert_eq!((done.status, done.cancel_requested_at), (ExecutionStatus::Succeeded, None), "it ran to its end");
});
