//! Privacy and retention: every data class of `[privacy]` swept after its
//! period and not a day before, and the audit log's guarded path (only the
//! privacy sweep deletes from it, only past the cutoff; only erasure
//! rewrites an actor), on both backends.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::DbConn;
use modelroute_db::db_test;
use modelroute_db::schema::{
    api_keys, async_executions, audit_events, email_outbox, execution_idempotency, executions, login_failures,
    oauth_flows, provider_callbacks, sessions, user_tokens, users,
};
use modelroute_types::time;

use crate::helpers::TestApp;

/// Runs `$body` with `$c` a connection of the app's pool, on either backend.
macro_rules! on_db {
    ($app:expr, |$c:ident| $body:expr) => {
        match $app.services.pool.get().await.unwrap() {
            DbConn::Postgres(mut conn) => {
                let $c = &mut conn;
                $body
            }
            DbConn::Sqlite(mut conn) => {
                let $c = &mut conn;
                $body
            }
        }
    };
}

/// Whether the row `id` of `$table` (keyed by `$key`) is still there.
macro_rules! exists {
    ($app:expr, $table:ident, $key:ident, $id:expr) => {{
        let n: i64 = on_db!($app, |c| $table::table.filter($table::$key.eq($id)).count().get_result(c).await.unwrap());
        n == 1
    }};
}

fn ago(now: NaiveDateTime, d: Duration) -> NaiveDateTime {
    now - d
}

/// Rows of every class, two each: one just past its period (due) and one a
/// day short of it (kept). Answers nothing: the ids are fixed.
async fn seed(app: &TestApp, now: NaiveDateTime) {
    let (day, hour, min) = (Duration::days(1), Duration::hours(1), Duration::minutes(1));
    let user = |id: &str| {
        (
            users::id.eq(id.to_owned()),
            users::email.eq(format!("{id}@example.com")),
            users::name.eq("Ada"),
            users::created_at.eq(now),
            users::updated_at.eq(now),
        )
    };
    on_db!(app, |c| diesel::insert_into(users::table).values(user("usr_r")).execute(c).await.unwrap());
    // Sessions: kept 7 days after expiry (by lifetime, or by 12 hours idle).
    let idle = Duration::hours(12);
    let session = |id: &str, expires: NaiveDateTime, seen: NaiveDateTime| {
        (
            sessions::id.eq(id.to_owned()),
            sessions::token_hash.eq(format!("hash_{id}")),
            sessions::user_id.eq("usr_r"),
            sessions::created_at.eq(ago(now, Duration::days(30))),
            sessions::last_seen_at.eq(seen),
            sessions::expires_at.eq(expires),
        )
    };
    for row in [
        session("ses_expired", ago(now, day * 7 + min), ago(now, day * 7 + min)),
        session("ses_idle", now + day, ago(now, day * 7 + idle + min)),
        session("ses_kept", ago(now, day * 6), ago(now, day * 6 - idle)),
        session("ses_live", now + day, now),
    ] {
        on_db!(app, |c| diesel::insert_into(sessions::table).values(row.clone()).execute(c).await.unwrap());
    }
    // Single-use tokens and OAuth flows: 24 hours after use or expiry.
    let token = |hash: &str, expires: NaiveDateTime, used: Option<NaiveDateTime>| {
        (
            user_tokens::token_hash.eq(hash.to_owned()),
            user_tokens::user_id.eq("usr_r"),
            user_tokens::purpose.eq("reset_password"),
            user_tokens::created_at.eq(ago(now, day * 3)),
            user_tokens::expires_at.eq(expires),
            user_tokens::used_at.eq(used),
        )
    };
    for row in [
        token("tok_used", now + hour, Some(ago(now, hour * 24 + min))),
        token("tok_expired", ago(now, hour * 24 + min), None),
        token("tok_kept", now + hour, Some(ago(now, hour * 23))),
    ] {
        on_db!(app, |c| diesel::insert_into(user_tokens::table).values(row.clone()).execute(c).await.unwrap());
    }
    let flow = |state: &str, expires: NaiveDateTime| {
        (
            oauth_flows::state_hash.eq(state.to_owned()),
            oauth_flows::provider.eq("google"),
            oauth_flows::pkce_verifier.eq("v"),
            oauth_flows::nonce.eq("n"),
            oauth_flows::redirect_to.eq("/"),
            oauth_flows::created_at.eq(ago(now, day * 2)),
            oauth_flows::expires_at.eq(expires),
        )
    };
    for row in [flow("flow_due", ago(now, hour * 24 + min)), flow("flow_kept", ago(now, hour * 23))] {
        on_db!(app, |c| diesel::insert_into(oauth_flows::table).values(row.clone()).execute(c).await.unwrap());
    }
    // Failed logins: 24 hours.
    for (id, at) in [("lf_due", ago(now, hour * 24 + min)), ("lf_kept", ago(now, hour * 23))] {
        let row =
            (login_failures::id.eq(id), login_failures::email.eq("x@example.com"), login_failures::failed_at.eq(at));
        on_db!(app, |c| diesel::insert_into(login_failures::table).values(row).execute(c).await.unwrap());
    }
    // The outbox: 7 days.
    for (id, at) in [("mail_due", ago(now, day * 7 + min)), ("mail_kept", ago(now, day * 6))] {
        let row = (
            email_outbox::id.eq(id),
            email_outbox::to_address.eq("x@example.com"),
            email_outbox::kind.eq("reset_password"),
            email_outbox::subject.eq("s"),
            email_outbox::body.eq("https://example.com/reset?token=abc"),
            email_outbox::created_at.eq(at),
            email_outbox::attempts.eq(1),
            email_outbox::next_attempt_at.eq(at),
            email_outbox::sent_at.eq(Some(at)),
        );
        on_db!(app, |c| diesel::insert_into(email_outbox::table).values(row).execute(c).await.unwrap());
    }
    // Audit events: 90 days.
    for (id, at) in [("aud_due", ago(now, day * 90 + min)), ("aud_kept", ago(now, day * 89))] {
        let row = (
            audit_events::id.eq(id),
            audit_events::actor.eq("operator"),
            audit_events::action.eq("test.event"),
            audit_events::created_at.eq(at),
        );
        on_db!(app, |c| diesel::insert_into(audit_events::table).values(row).execute(c).await.unwrap());
    }
    // Execution content: 24 hours after the end; a running one keeps it.
    let (project, key): (String, String) =
        on_db!(app, |c| api_keys::table.select((api_keys::project_id, api_keys::id)).first(c).await.unwrap());
    for (id, finished) in
        [("exe_due", Some(ago(now, hour * 24 + min))), ("exe_kept", Some(ago(now, hour * 23))), ("exe_running", None)]
    {
        let row = (
            executions::id.eq(id),
            executions::org_id.eq(app.org.to_string()),
            executions::project_id.eq(&project),
            executions::api_key_id.eq(&key),
            executions::model.eq("builtin/echo"),
            executions::status.eq(if finished.is_some() { "succeeded" } else { "running" }),
            executions::stream.eq(false),
            executions::hold_amount.eq(0_i64),
            executions::created_at.eq(ago(now, day * 3)),
            executions::finished_at.eq(finished),
            executions::mode.eq("async"),
        );
        on_db!(app, |c| diesel::insert_into(executions::table).values(row.clone()).execute(c).await.unwrap());
        let extra = (
            async_executions::execution_id.eq(id),
            async_executions::request.eq(Some("{\"secret\":\"prompt\"}")),
            async_executions::deadline_at.eq(now + day),
            async_executions::output.eq(Some("{\"text\":\"answer\"}")),
        );
        on_db!(app, |c| diesel::insert_into(async_executions::table).values(extra).execute(c).await.unwrap());
    }
    // Idempotency keys: 24 hours.
    for (k, at) in [("idem_due", ago(now, hour * 24 + min)), ("idem_kept", ago(now, hour * 23))] {
        let row = (
            execution_idempotency::org_id.eq(app.org.to_string()),
            execution_idempotency::idempotency_key.eq(k),
            execution_idempotency::request_hash.eq("h"),
            execution_idempotency::created_at.eq(at),
        );
        on_db!(app, |c| diesel::insert_into(execution_idempotency::table)
            .values(row.clone())
            .execute(c)
            .await
            .unwrap());
    }
    // Provider callbacks: 90 days.
    for (id, at) in [("pcb_due", ago(now, day * 90 + min)), ("pcb_kept", ago(now, day * 89))] {
        let row = (
            provider_callbacks::id.eq(id),
            provider_callbacks::received_at.eq(at),
            provider_callbacks::provider.eq("replicate"),
            provider_callbacks::verified.eq(true),
            provider_callbacks::outcome.eq("applied"),
            provider_callbacks::payload_sha256.eq("0"),
        );
        on_db!(app, |c| diesel::insert_into(provider_callbacks::table).values(row).execute(c).await.unwrap());
    }
}

/// Whether the asynchronous execution `id` still holds its request and output.
async fn content_kept(app: &TestApp, id: &str) -> bool {
    let (request, output): (Option<String>, Option<String>) = on_db!(app, |c| async_executions::table
        .find(id)
        .select((async_executions::request, async_executions::output))
        .first(c)
        .await
        .unwrap());
    request.is_some() && output.is_some()
}

db_test!(async fn every_class_is_deleted_after_its_period_and_not_a_day_before(db) {
    // No worker: the periodic sweep would race with the one under test.
    let app = TestApp::spawn(db, |s| s.jobs.run_in_server = false).await;
    let now = time::now();
    seed(&app, now).await;
    // Batches of one: every class takes several statements.
    let mut config = app.services.privacy_config.clone();
    config.batch = 1;
    let retention = app.services.retention(&config);
    let report = retention.report(now, None).await.unwrap();
    let due = |class: &str| report.iter().find(|r| r.class == class).map(|r| r.due);
    assert_eq!(due("expired_sessions"), Some(2));
    assert_eq!(due("spent_tokens"), Some(3), "two tokens and a flow");
    assert_eq!(due("login_failures"), Some(1));
    assert_eq!(due("sent_emails"), Some(1));
    assert_eq!(due("audit_events"), Some(1));
    assert_eq!(due("execution_content"), Some(1));
    assert_eq!(due("idempotency_keys"), Some(1));
    assert_eq!(due("provider_callbacks"), Some(1));

    let mut progress = Vec::new();
    let swept = retention.sweep(now, None, &mut |s| progress.push((s.class, s.deleted))).await.unwrap();
    let deleted = |class: &str| swept.iter().find(|s| s.class == class).map(|s| s.deleted);
    assert_eq!(deleted("expired_sessions"), Some(2));
    assert_eq!(deleted("spent_tokens"), Some(3));
    assert_eq!(deleted("audit_events"), Some(1));
    assert!(progress.contains(&("spent_tokens", 2)), "progress as each batch lands: {progress:?}");

    assert!(!exists!(app, sessions, id, "ses_expired"));
    assert!(!exists!(app, sessions, id, "ses_idle"));
    assert!(exists!(app, sessions, id, "ses_kept"), "a day short of its period");
    assert!(exists!(app, sessions, id, "ses_live"));
    assert!(!exists!(app, user_tokens, token_hash, "tok_used"));
    assert!(!exists!(app, user_tokens, token_hash, "tok_expired"));
    assert!(exists!(app, user_tokens, token_hash, "tok_kept"));
    assert!(!exists!(app, oauth_flows, state_hash, "flow_due"));
    assert!(exists!(app, oauth_flows, state_hash, "flow_kept"));
    assert!(!exists!(app, login_failures, id, "lf_due"));
    assert!(exists!(app, login_failures, id, "lf_kept"));
    assert!(!exists!(app, email_outbox, id, "mail_due"));
    assert!(exists!(app, email_outbox, id, "mail_kept"));
    assert!(!exists!(app, audit_events, id, "aud_due"));
    assert!(exists!(app, audit_events, id, "aud_kept"));
    assert!(!exists!(app, execution_idempotency, idempotency_key, "idem_due"));
    assert!(exists!(app, execution_idempotency, idempotency_key, "idem_kept"));
    assert!(!exists!(app, provider_callbacks, id, "pcb_due"));
    assert!(exists!(app, provider_callbacks, id, "pcb_kept"));
    // Content goes; the record (metadata, billing) stays.
    assert!(!content_kept(&app, "exe_due").await);
    assert!(exists!(app, executions, id, "exe_due"));
    assert!(content_kept(&app, "exe_kept").await);
    assert!(content_kept(&app, "exe_running").await, "a running execution keeps its request");

    // Nothing is due any more; a second sweep deletes nothing.
    let again = retention.sweep(now, None, &mut |_| {}).await.unwrap();
    assert!(again.iter().all(|s| s.deleted == 0), "{again:?}");
    // A day (and a minute) later, the kept ones are due.
    let later = retention.report(now + Duration::days(1) + Duration::minutes(1), None).await.unwrap();
    let due = |class: &str| later.iter().find(|r| r.class == class).map(|r| r.due);
    assert_eq!(due("expired_sessions"), Some(1));
    assert_eq!(due("audit_events"), Some(1));
    assert_eq!(due("execution_content"), Some(1));
});

db_test!(async fn the_audit_log_refuses_direct_deletes_and_updates_and_lets_only_the_guarded_path_through(db) {
    // No worker: the periodic sweep would race with the one under test.
    let app = TestApp::spawn(db, |s| s.jobs.run_in_server = false).await;
    let now = time::now();
    for (id, at, actor) in [
        ("aud_old", now - Duration::days(100), "usr_erased"),
        ("aud_new", now - Duration::days(1), "usr_erased"),
        ("aud_other", now - Duration::days(100), "usr_other"),
    ] {
        let row = (
            audit_events::id.eq(id),
            audit_events::actor.eq(actor),
            audit_events::action.eq("session.login"),
            audit_events::ip.eq(Some("203.0.113.9")),
            audit_events::created_at.eq(at),
        );
        on_db!(app, |c| diesel::insert_into(audit_events::table).values(row).execute(c).await.unwrap());
    }
    // Directly: no delete (recent or old) and no update goes through.
    let deleted = on_db!(app, |c| diesel::delete(audit_events::table.find("aud_new")).execute(c).await);
    assert!(deleted.is_err(), "a recent event cannot be deleted");
    let deleted = on_db!(app, |c| diesel::delete(audit_events::table.find("aud_old")).execute(c).await);
    assert!(deleted.is_err(), "nor an old one outside the guarded path");
    let updated = on_db!(app, |c| diesel::update(audit_events::table.find("aud_old"))
        .set(audit_events::actor.eq("someone_else"))
        .execute(c)
        .await);
    assert!(updated.is_err(), "nor an update");
    assert!(exists!(app, audit_events, id, "aud_old"));

    // The guarded purge deletes only what is older than its cutoff.
    let purged = app.services.identity.purge_audit_events(now - Duration::days(90), 100).await.unwrap();
    assert_eq!(purged, 2);
    assert!(!exists!(app, audit_events, id, "aud_old"));
    assert!(!exists!(app, audit_events, id, "aud_other"));
    assert!(exists!(app, audit_events, id, "aud_new"));
    // The guard is gone with its transaction: a direct delete is refused again.
    let deleted = on_db!(app, |c| diesel::delete(audit_events::table.find("aud_new")).execute(c).await);
    assert!(deleted.is_err());

    // Pseudonymising an erased actor keeps the event's shape, clears where it came from.
    let changed = app.services.identity.pseudonymise_audit_actor("usr_erased", "erased_1").await.unwrap();
    assert_eq!(changed, 1);
    let (actor, action, ip, created): (String, String, Option<String>, NaiveDateTime) = on_db!(app, |c| audit_events::table
        .find("aud_new")
        .select((audit_events::actor, audit_events::action, audit_events::ip, audit_events::created_at))
        .first(c)
        .await
        .unwrap());
    assert_eq!((actor.as_str(), action.as_str(), ip), ("erased_1", "session.login", None));
    assert_eq!(created, now - Duration::days(1));
    let updated = on_db!(app, |c| diesel::update(audit_events::table.find("aud_new"))
        .set(audit_events::actor.eq("usr_erased"))
        .execute(c)
        .await);
    assert!(updated.is_err(), "and the log is closed again");
});

db_test!(async fn analytics_withhold_buckets_of_fewer_than_k_orgs_and_name_no_one(db) {
    use modelroute_identity::{Actor, Scopes};

    let app = TestApp::spawn(db, |s| s.jobs.run_in_server = false).await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
    let noon = day.and_hms_opt(12, 0, 0).unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut n = 0;
    // Five orgs run acme/a (two executions each, one of them failed);
    // four of them also run acme/b.
    for o in 0..5 {
        let (org, _) = app.services.create_org(&format!("Org {o}"), None, &Actor::operator()).await.unwrap();
        let project = app.services.create_project(&org.id, "p", &Actor::operator()).await.unwrap();
        let (key, _) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
        ids.extend([org.id.to_string(), project.id.to_string(), key.id.to_string()]);
        let mut runs = vec![("acme/a", "succeeded", 100), ("acme/a", "failed", 300)];
        if o < 4 {
            runs.push(("acme/b", "succeeded", 50));
        }
        // Not finished: does not count.
        runs.push(("acme/a", "running", 0));
        for (model, status, took_ms) in runs {
            n += 1;
            let id = format!("exe_{n:032x}");
            ids.push(id.clone());
            let started = noon + Duration::minutes(n);
            let finished = (status != "running").then(|| started + Duration::milliseconds(took_ms));
            let row = (
                executions::id.eq(id),
                executions::org_id.eq(org.id.to_string()),
                executions::project_id.eq(project.id.to_string()),
                executions::api_key_id.eq(key.id.to_string()),
                executions::model.eq(model),
                executions::status.eq(status),
                executions::stream.eq(false),
                executions::hold_amount.eq(0_i64),
                executions::input_tokens.eq(Some(10_i64)),
                executions::output_tokens.eq(Some(20_i64)),
                executions::created_at.eq(started),
                executions::started_at.eq(Some(started)),
                executions::finished_at.eq(finished),
                executions::mode.eq("sync"),
            );
            on_db!(app, |c| diesel::insert_into(executions::table).values(row.clone()).execute(c).await.unwrap());
        }
    }

    let to = day.succ_opt().unwrap();
    let report = app.services.executor.analytics(day, to, 5).await.unwrap();
    assert_eq!(report.suppressed, 1, "acme/b: four orgs");
    assert_eq!(report.buckets.len(), 1, "{:?}", report.buckets);
    let a = &report.buckets[0];
    assert_eq!((a.day, a.model.as_str(), a.executions, a.failed), (day, "acme/a", 10, 5));
    assert!((a.error_rate - 0.5).abs() < 1e-9);
    assert_eq!((a.input_tokens, a.output_tokens), (100, 200));
    assert_eq!((a.latency_ms_p50, a.latency_ms_p90, a.latency_ms_p99), (100, 300, 300));
    // With k = 4 acme/b is published too; the day before has nothing.
    assert_eq!(app.services.executor.analytics(day, to, 4).await.unwrap().buckets.len(), 2);
    let before = app.services.executor.analytics(day.pred_opt().unwrap(), day, 2).await.unwrap();
    assert!(before.buckets.is_empty() && before.suppressed == 0);

    // No row carries an id of any kind.
    let published = serde_json::to_string(&app.services.executor.analytics(day, to, 2).await.unwrap()).unwrap();
    for id in &ids {
        assert!(!published.contains(id.as_str()), "{id} in {published}");
    }
    for prefix in ["org_", "prj_", "key_", "exe_", "usr_"] {
        assert!(!published.contains(prefix), "{prefix} in {published}");
    }
    // A bucket of one org would identify it; an open-ended window is refused.
    assert!(app.services.executor.analytics(day, to, 1).await.is_err());
    assert!(app.services.executor.analytics(day, day, 5).await.is_err());
});
