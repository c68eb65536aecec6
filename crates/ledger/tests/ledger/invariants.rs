//! The ledger's invariants, on SQLite and PostgreSQL.

use crate::common::{execute, insert_org};
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_ledger::{Balance, CreditSource, HoldRequest, HoldStatus, Ledger, LedgerConfig, LedgerError, SqlLedger};
use modelroute_types::{Money, OrgId, time};

async fn ledger_with(db: &TestDb, config: LedgerConfig) -> (SqlLedger, OrgId) {
    let ledger = SqlLedger::open(db.pool().clone(), config).await.unwrap();
    let org = insert_org(db).await;
    ledger.open_org_accounts(&org).await.unwrap();
    (ledger, org)
}

async fn ledger(db: &TestDb) -> (SqlLedger, OrgId) {
    ledger_with(db, LedgerConfig::default()).await
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

fn hold_req(org: &OrgId, amount: Money) -> HoldRequest {
    HoldRequest { org_id: org.clone(), amount, reference: "test".into(), idempotency_key: None, expires_in: None }
}

async fn assert_sound(l: &SqlLedger) {
    let report = l.verify().await.unwrap();
    assert!(report.violations.is_empty(), "ledger invariants broken: {:?}", report.violations);
}

db_test!(async fn hold_settle_release_move_money_as_documented(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("10"), CreditSource::Grant, None).await.unwrap();
    let h = l.hold(hold_req(&org, usd("2"))).await.unwrap();
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("8"), held: usd("2") });
    let r = l.settle(&h.id, usd("0.5")).await.unwrap();
    assert_eq!((r.charged, r.released), (usd("0.5"), usd("1.5")));
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("9.5"), held: Money::ZERO });
    let h2 = l.hold(hold_req(&org, usd("3"))).await.unwrap();
    l.release(&h2.id).await.unwrap();
    assert_eq!(l.balance(&org).await.unwrap().available, usd("9.5"));
    let report = l.verify().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.entries, 5);
});

db_test!(async fn a_hold_status_no_variant_names_is_an_error_never_held(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("10"), CreditSource::Grant, None).await.unwrap();
    let h = l.hold(hold_req(&org, usd("2"))).await.unwrap();
    // A newer server's status, or a corrupted row.
    execute(&db, &format!("UPDATE ledger_holds SET status = 'frozen' WHERE id = '{}'", h.id)).await;
    let err = l.get_hold(&h.id).await.unwrap_err();
    assert!(err.to_string().contains("unknown stored hold status `frozen`"), "{err}");
    // Neither settled nor released as though it were held.
    assert!(l.settle(&h.id, usd("1")).await.is_err());
    assert!(l.release(&h.id).await.is_err());
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("8"), held: usd("2") });
});

db_test!(async fn insufficient_balance_writes_nothing(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("1"), CreditSource::Grant, None).await.unwrap();
    let before = l.verify().await.unwrap().entries;
    match l.hold(hold_req(&org, usd("1.000000001"))).await {
        Err(LedgerError::InsufficientBalance { needed, available }) => {
            assert_eq!((needed, available), (usd("1.000000001"), usd("1")));
        }
        other => panic!("expected insufficient balance, got {other:?}"),
    }
    assert_eq!(l.verify().await.unwrap().entries, before);
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("1"), held: Money::ZERO });
    assert!(matches!(l.hold(hold_req(&org, Money::ZERO)).await, Err(LedgerError::NonPositiveAmount(_))));
    assert_sound(&l).await;
});

db_test!(async fn a_hold_resolves_exactly_once(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("5"), CreditSource::Grant, None).await.unwrap();
    let h = l.hold(hold_req(&org, usd("1"))).await.unwrap();
    let first = l.settle(&h.id, usd("0.25")).await.unwrap();
    let again = l.settle(&h.id, usd("0.90")).await.unwrap();
    assert_eq!(again.charged, first.charged, "a replay returns the first outcome");
    assert_eq!(again.entry_id, first.entry_id, "and names the entry that settled it");
    assert!(matches!(l.release(&h.id).await, Err(LedgerError::AlreadyResolved(HoldStatus::Settled))));
    // Concurrent settlements of one hold: one wins, the ledger stays sound.
    let h = l.hold(hold_req(&org, usd("1"))).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (l, id) = (l.clone(), h.id.clone());
            tokio::spawn(async move { l.settle(&id, Money::from_units(100_000_000 + i)).await })
        })
        .collect();
    let mut charged = Vec::new();
    for t in tasks {
        charged.push(t.await.unwrap().unwrap().charged);
    }
    charged.dedup();
    assert_eq!(charged.len(), 1, "all callers see the one outcome: {charged:?}");
    assert_eq!(l.balance(&org).await.unwrap().available, usd("5") - usd("0.25") - charged[0]);
    assert_sound(&l).await;
});

db_test!(async fn overage_is_capped_at_the_hold(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("5"), CreditSource::Grant, None).await.unwrap();
    let h = l.hold(hold_req(&org, usd("1"))).await.unwrap();
    let r = l.settle(&h.id, usd("1.5")).await.unwrap();
    assert_eq!((r.charged, r.released, r.overage), (usd("1"), Money::ZERO, usd("0.5")));
    assert_eq!(l.balance(&org).await.unwrap().available, usd("4"));
    assert_sound(&l).await;
});

db_test!(async fn concurrent_holds_never_overspend(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("20"), CreditSource::Grant, None).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (l, org) = (l.clone(), org.clone());
            tokio::spawn(async move { l.hold(hold_req(&org, usd("1"))).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LedgerError::InsufficientBalance { .. }) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, refused), (20, 180));
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: Money::ZERO, held: usd("20") });
    assert_sound(&l).await;
});

db_test!(async fn idempotency_keys_replay_the_first_outcome(db) {
    let (l, org) = ledger(&db).await;
    let a = l.credit(&org, usd("3"), CreditSource::Grant, Some("grant-1".into())).await.unwrap();
    let b = l.credit(&org, usd("3"), CreditSource::Grant, Some("grant-1".into())).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(l.balance(&org).await.unwrap().available, usd("3"));
    let req = HoldRequest { idempotency_key: Some("exec-1".into()), ..hold_req(&org, usd("1")) };
    let h1 = l.hold(req.clone()).await.unwrap();
    let h2 = l.hold(req.clone()).await.unwrap();
    assert_eq!(h1.id, h2.id);
    assert_eq!(l.balance(&org).await.unwrap().available, usd("2"));
    let other = HoldRequest { amount: usd("2"), ..req };
    assert!(matches!(l.hold(other).await, Err(LedgerError::IdempotencyConflict)));
    // The same key with another amount or source is another request: refused, nothing posted.
    let more = l.credit(&org, usd("4"), CreditSource::Grant, Some("grant-1".into())).await;
    assert!(matches!(more, Err(LedgerError::IdempotencyConflict)), "{more:?}");
    let promo = l.credit(&org, usd("3"), CreditSource::Promo, Some("grant-1".into())).await;
    assert!(matches!(promo, Err(LedgerError::IdempotencyConflict)), "{promo:?}");
    assert_eq!(l.balance(&org).await.unwrap().available, usd("2"));
    assert_sound(&l).await;
});

db_test!(async fn operator_adjustments_add_and_take_but_never_overspend(db) {
    let (l, org) = ledger(&db).await;
    l.adjust(&org, usd("2"), "goodwill after the outage of 3 May", Some("adj-1".into())).await.unwrap();
    l.adjust(&org, usd("-0.5"), "double grant corrected", None).await.unwrap();
    assert_eq!(l.balance(&org).await.unwrap().available, usd("1.5"));
    let over = l.adjust(&org, usd("-2"), "too much", None).await;
    assert!(matches!(over, Err(LedgerError::InsufficientBalance { .. })), "{over:?}");
    assert!(matches!(l.adjust(&org, usd("1"), "  ", None).await, Err(LedgerError::InvalidReason)));
    assert!(matches!(l.adjust(&org, usd("0"), "zero", None).await, Err(LedgerError::NonPositiveAmount(_))));
    // Replays answer the first entry; another amount under the key is a conflict.
    let again = l.adjust(&org, usd("2"), "goodwill after the outage of 3 May", Some("adj-1".into())).await;
    assert!(again.is_ok());
    let other = l.adjust(&org, usd("3"), "goodwill after the outage of 3 May", Some("adj-1".into())).await;
    assert!(matches!(other, Err(LedgerError::IdempotencyConflict)));
    assert_eq!(l.balance(&org).await.unwrap().available, usd("1.5"));
    let journal = l.recent_entries(&org, 10).await.unwrap();
    assert!(journal.iter().any(|e| e.kind == "adjust" && e.memo == "adjust: double grant corrected"));
    assert_sound(&l).await;
});

db_test!(async fn concurrent_duplicate_credits_post_once(db) {
    let (l, org) = ledger(&db).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (l, org) = (l.clone(), org.clone());
            tokio::spawn(async move { l.credit(&org, usd("5"), CreditSource::Grant, Some("topup-42".into())).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1, "every duplicate answers the first entry");
    assert_eq!(l.balance(&org).await.unwrap().available, usd("5"));
    assert_sound(&l).await;
});

db_test!(async fn the_sweeper_releases_expired_holds(db) {
    let config = LedgerConfig { hold_timeout_secs: 0, ..LedgerConfig::default() };
    let (l, org) = ledger_with(&db, config).await;
    l.credit(&org, usd("2"), CreditSource::Grant, None).await.unwrap();
    let h = l.hold(hold_req(&org, usd("2"))).await.unwrap();
    assert_eq!(l.sweep_expired(time::now()).await.unwrap(), 1);
    assert_eq!(l.get_hold(&h.id).await.unwrap().status, HoldStatus::Expired);
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("2"), held: Money::ZERO });
    // A late settlement of an expired hold is refused, not double-counted.
    assert!(matches!(l.settle(&h.id, usd("1")).await, Err(LedgerError::AlreadyResolved(HoldStatus::Expired))));
    assert_sound(&l).await;
});

db_test!(async fn an_owner_sets_its_holds_expiry_and_renews_it(db) {
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("3"), CreditSource::Grant, None).await.unwrap();
    let short = HoldRequest { expires_in: Some(std::time::Duration::from_secs(5)), ..hold_req(&org, usd("1")) };
    let (kept, lapsed, settled) = (l.hold(short.clone()).await.unwrap(), l.hold(short.clone()).await.unwrap(), l.hold(short).await.unwrap());
    let placed = time::now();
    assert!(kept.expires_at > placed && kept.expires_at <= placed + chrono::Duration::seconds(5), "{kept:?}");
    l.settle(&settled.id, usd("0.5")).await.unwrap();
    // The owner of `kept` renews it for an hour; a resolved hold is skipped,
    // and an earlier expiry never shortens one.
    let hour = placed + chrono::Duration::hours(1);
    assert_eq!(l.renew(&[kept.id.clone(), settled.id.clone()], hour).await.unwrap(), 1);
    assert_eq!(l.renew(std::slice::from_ref(&kept.id), placed).await.unwrap(), 0, "never earlier");
    assert_eq!(l.get_hold(&kept.id).await.unwrap().expires_at, hour);
    // Ten seconds on, the sweeper releases only the hold nobody renewed.
    assert_eq!(l.sweep_expired(placed + chrono::Duration::seconds(10)).await.unwrap(), 1);
    assert_eq!(l.get_hold(&lapsed.id).await.unwrap().status, HoldStatus::Expired);
    assert_eq!(l.get_hold(&kept.id).await.unwrap().status, HoldStatus::Held);
    l.settle(&kept.id, usd("1")).await.unwrap();
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("1.5"), held: Money::ZERO });
    assert_sound(&l).await;
});

db_test!(async fn concurrent_holds_and_settlements_do_not_deadlock(db) {
    // Holds lock `available` and `held`; settlements lock `held`, `revenue`
    // and `available`. Taken in different orders, PostgreSQL deadlocks.
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("100"), CreditSource::Grant, None).await.unwrap();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (l, org) = (l.clone(), org.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let h = l.hold(hold_req(&org, usd("0.1"))).await?;
                    if i % 3 == 0 { l.release(&h.id).await?; } else { l.settle(&h.id, usd("0.01")).await?; }
                }
                Ok::<_, LedgerError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(l.balance(&org).await.unwrap().held, Money::ZERO);
    assert_sound(&l).await;
});

db_test!(async fn admission_race_500_holds_against_a_balance_for_50(db) {
    // Ledger invariant L2 at the ledger issue's scale: in every repetition
    // exactly 50 of 500 concurrent holds are admitted, never one more.
    let (l, _) = ledger(&db).await;
    for rep in 0..20 {
        let org = insert_org(&db).await;
        l.credit(&org, usd("50"), CreditSource::Grant, None).await.unwrap();
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let (l, org) = (l.clone(), org.clone());
                tokio::spawn(async move { l.hold(hold_req(&org, usd("1"))).await })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(LedgerError::InsufficientBalance { .. }) => {}
                Err(e) => panic!("repetition {rep}: unexpected error {e}"),
            }
        }
        assert_eq!(admitted, 50, "repetition {rep}");
        assert_eq!(l.balance(&org).await.unwrap(), Balance { available: Money::ZERO, held: usd("50") });
    }
    assert_sound(&l).await;
});

db_test!(async fn concurrent_holds_with_one_key_place_one_hold(db) {
    // On SQLite these arrive in one group-commit batch: the batch itself
    // must see the key it has just used.
    let (l, org) = ledger(&db).await;
    l.credit(&org, usd("5"), CreditSource::Grant, None).await.unwrap();
    let req = HoldRequest { idempotency_key: Some("exec-dup".into()), ..hold_req(&org, usd("1")) };
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (l, req) = (l.clone(), req.clone());
            tokio::spawn(async move { l.hold(req).await })
        })
        .collect();
    let mut holds = Vec::new();
    for t in tasks {
        holds.push(t.await.unwrap().unwrap());
    }
    // Every caller got the one hold, exactly as stored (timestamps included).
    let stored = l.get_hold(&holds[0].id).await.unwrap();
    for h in &holds {
        assert_eq!(h, &stored);
    }
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("4"), held: usd("1") });
    // Resolved from many callers at once: one entry, one outcome.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (l, id) = (l.clone(), stored.id.clone());
            tokio::spawn(async move { if i % 2 == 0 { l.release(&id).await } else { l.settle(&id, usd("0.5")).await } })
        })
        .collect();
    let outcomes: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).map(|r| r.status).collect();
    assert!(!won.is_empty() && won.iter().all(|s| *s == won[0]), "{outcomes:?}");
    let refused = outcomes.iter().filter(|o| matches!(o, Err(LedgerError::AlreadyResolved(_)))).count();
    assert_eq!(won.len() + refused, 8, "{outcomes:?}");
    let expected = if won[0] == HoldStatus::Settled { usd("4.5") } else { usd("5") };
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: expected, held: Money::ZERO });
    assert_sound(&l).await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_lane_settles_within_its_own_transaction_once_and_never_below_zero() {
    use modelroute_ledger::{SettledWithin, settle_within};
    let db = TestDb::sqlite().await;
    let (l, org) = ledger(&db).await;
    assert!(l.settles_within_writer(), "a SQLite ledger goes through the shared writer");
    l.credit(&org, usd("10"), CreditSource::Grant, None).await.unwrap();
    let (a, b) = (l.hold(hold_req(&org, usd("2"))).await.unwrap(), l.hold(hold_req(&org, usd("1"))).await.unwrap());
    let mut conn = db.pool().open_sqlite_writer().unwrap().unwrap();
    let settle = |conn: &mut diesel::SqliteConnection, what: &[(modelroute_types::HoldId, Money)]| {
        conn.immediate_transaction(|t| settle_within(t, what)).unwrap()
    };
    // A negative cost is not settled here (`Ledger::settle` refuses it); the other is, set-wise.
    let done = settle(&mut conn, &[(a.id.clone(), usd("-1")), (b.id.clone(), usd("0.25"))]);
    let [SettledWithin::Elsewhere, SettledWithin::Now(r)] = done.as_slice() else { panic!("{done:?}") };
    assert_eq!((r.charged, r.released, &r.hold_id), (usd("0.25"), usd("0.75"), &b.id));
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("7.75"), held: usd("2") });
    // Once: the second time it is the ledger's to answer, and nothing moves.
    let again = settle(&mut conn, &[(b.id.clone(), usd("0.5"))]);
    assert!(matches!(again.as_slice(), [SettledWithin::Elsewhere]), "{again:?}");
    assert_eq!(l.settle(&b.id, usd("0.5")).await.unwrap().charged, usd("0.25"), "the first outcome");
    // Rolled back with the caller's transaction: nothing settled.
    let rolled: Result<(), diesel::result::Error> = conn.immediate_transaction(|t| {
        settle_within(t, &[(a.id.clone(), usd("1"))]).unwrap();
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled.is_err());
    assert_eq!(l.get_hold(&a.id).await.unwrap().status, HoldStatus::Held);
    assert_eq!(l.balance(&org).await.unwrap(), Balance { available: usd("7.75"), held: usd("2") });
    assert_sound(&l).await;
}
