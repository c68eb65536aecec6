//! A model-based property test: random sequences of credit, hold, settle,
//! release and replayed resolutions — some of them batches run concurrently —
//! against the SQL ledger and against a tiny in-memory reference model;
//! after every step the balances agree, and after the run `verify` finds the
//! whole journal sound. A concurrent batch may serialise in any order, so
//! the model takes the outcomes the ledger reports and checks that they are
//! possible: a refused hold could not have fitted even with every credit and
//! release of the batch; concurrent resolutions of one hold agree on one
//! outcome, which one of them asked for.
//!
//! Cases per backend: `PROPTEST_CASES` (default 64; CI runs 5,000 per
//! backend). Failing seeds are kept by proptest and replayed first.

use crate::common::insert_org;
use modelroute_db::Backend;
use modelroute_db::testing::TestDb;
use modelroute_ledger::{CreditSource, HoldRequest, HoldStatus, Ledger, LedgerConfig, LedgerError, SqlLedger};
use modelroute_types::{HoldId, Money, OrgId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Credit(i64),
    Hold(i64),
    /// Settle the n-th hold placed so far (mod count) for `actual`.
    Settle(usize, i64),
    Release(usize),
    /// These, all at once (tasks on a multi-threaded runtime).
    Concurrent(Vec<Op>),
}

fn primitive() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..5_000i64).prop_map(Op::Credit),
        (1..3_000i64).prop_map(Op::Hold),
        (any::<usize>(), 0..4_000i64).prop_map(|(i, a)| Op::Settle(i, a)),
        any::<usize>().prop_map(Op::Release),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![4 => primitive(), 1 => proptest::collection::vec(primitive(), 2..7).prop_map(Op::Concurrent)]
}

/// What one operation of a concurrent batch did.
enum Outcome {
    Credited(i64),
    Held(i64, Result<HoldId, LedgerError>),
    Resolved { index: usize, settle: bool, actual: i64, result: Result<(HoldStatus, i64), LedgerError> },
}

async fn perform(l: SqlLedger, org: OrgId, ids: Vec<HoldId>, op: Op) -> Option<Outcome> {
    match op {
        Op::Credit(a) => {
            l.credit(&org, Money::from_units(a), CreditSource::Grant, None).await.unwrap();
            Some(Outcome::Credited(a))
        }
        Op::Hold(a) => {
            let req = HoldRequest {
                org_id: org,
                amount: Money::from_units(a),
                reference: "p".into(),
                idempotency_key: None,
                expires_in: None,
            };
            Some(Outcome::Held(a, l.hold(req).await.map(|h| h.id)))
        }
        Op::Settle(i, _) | Op::Release(i) if !ids.is_empty() => {
            let index = i % ids.len();
            let (settle, actual) = match op {
                Op::Settle(_, actual) => (true, actual),
                _ => (false, 0),
            };
            let result = if settle {
                l.settle(&ids[index], Money::from_units(actual)).await
            } else {
                l.release(&ids[index]).await
            };
            Some(Outcome::Resolved { index, settle, actual, result: result.map(|r| (r.status, r.charged.units())) })
        }
        Op::Settle(..) | Op::Release(_) | Op::Concurrent(_) => None,
    }
}

/// One resolution of a batch: settle (or release), the amount asked, the answer.
type Attempt = (bool, i64, Result<(HoldStatus, i64), LedgerError>);

/// Applies a concurrent batch's outcomes to the model, checking each is a
/// possible result of some order of the batch.
fn apply_batch(m: &mut Model, ids: &mut Vec<HoldId>, outcomes: Vec<Outcome>) -> Result<(), TestCaseError> {
    // The least the available balance could have fallen to during the batch:
    // credits and resolutions only add to it; only the batch's admitted holds take.
    let floor =
        m.available - outcomes.iter().map(|o| if let Outcome::Held(a, Ok(_)) = o { *a } else { 0 }).sum::<i64>();
    let mut resolutions: std::collections::BTreeMap<usize, Vec<Attempt>> = std::collections::BTreeMap::new();
    for o in outcomes {
        match o {
            Outcome::Credited(a) => m.available += a,
            Outcome::Held(a, Ok(id)) => {
                m.available -= a;
                m.held += a;
                m.holds.push((a, None, 0));
                ids.push(id);
            }
            Outcome::Held(a, Err(LedgerError::InsufficientBalance { .. })) => {
                prop_assert!(a > floor, "refused {a} though at least {floor} was available all along");
            }
            Outcome::Held(_, Err(e)) => return Err(TestCaseError::fail(e.to_string())),
            Outcome::Resolved { index, settle, actual, result } => {
                resolutions.entry(index).or_default().push((settle, actual, result));
            }
        }
    }
    for (index, attempts) in resolutions {
        let (amount, before, charged_before) = m.holds[index];
        let oks: Vec<(HoldStatus, i64)> = attempts.iter().filter_map(|(_, _, r)| r.as_ref().ok().copied()).collect();
        // Every successful answer is the same outcome.
        prop_assert!(oks.windows(2).all(|w| w[0] == w[1]), "hold {index}: answers disagree: {oks:?}");
        let outcome = match (before, oks.first()) {
            (Some(s), _) => (s, charged_before),
            (None, Some(o)) => *o,
            (None, None) => return Err(TestCaseError::fail(format!("hold {index}: nobody resolved it"))),
        };
        if before.is_none() {
            // The outcome is what one of the attempts asked for.
            let asked = attempts.iter().any(|(settle, actual, _)| {
                if *settle {
                    outcome == (HoldStatus::Settled, (*actual).min(amount))
                } else {
                    outcome == (HoldStatus::Released, 0)
                }
            });
            prop_assert!(asked, "hold {index}: {outcome:?} is no attempt's");
            m.held -= amount;
            m.available += amount - outcome.1;
            m.holds[index] = (amount, Some(outcome.0), outcome.1);
        }
        for (_, _, r) in &attempts {
            match r {
                Ok(o) => prop_assert_eq!(*o, outcome),
                Err(LedgerError::AlreadyResolved(got)) => prop_assert_eq!(*got, outcome.0),
                Err(e) => return Err(TestCaseError::fail(format!("hold {index}: {e}"))),
            }
        }
    }
    Ok(())
}

/// The reference: what the ledger must do, in a dozen lines.
#[derive(Default)]
struct Model {
    available: i64,
    held: i64,
    holds: Vec<(i64, Option<HoldStatus>, i64)>, // amount, resolution, charged
}

async fn run_case(db: &TestDb, l: &SqlLedger, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let org = insert_org(db).await;
    l.open_org_accounts(&org).await.unwrap();
    let mut m = Model::default();
    let mut ids: Vec<HoldId> = Vec::new();
    for op in ops {
        match op {
            Op::Credit(a) => {
                l.credit(&org, Money::from_units(a), CreditSource::Grant, None).await.unwrap();
                m.available += a;
            }
            Op::Hold(a) => {
                let req = HoldRequest {
                    org_id: org.clone(),
                    amount: Money::from_units(a),
                    reference: "p".into(),
                    idempotency_key: None,
                    expires_in: None,
                };
                match l.hold(req).await {
                    Ok(h) => {
                        prop_assert!(a <= m.available, "admitted {a} with only {} available", m.available);
                        m.available -= a;
                        m.held += a;
                        m.holds.push((a, None, 0));
                        ids.push(h.id);
                    }
                    Err(LedgerError::InsufficientBalance { .. }) => prop_assert!(a > m.available),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Settle(i, _) | Op::Release(i) if !ids.is_empty() => {
                let i = i % ids.len();
                let (settle, actual) = match op {
                    Op::Settle(_, actual) => (true, actual),
                    _ => (false, 0),
                };
                let result =
                    if settle { l.settle(&ids[i], Money::from_units(actual)).await } else { l.release(&ids[i]).await };
                let (amount, resolved, charged) = m.holds[i];
                match (resolved, result) {
                    (None, Ok(r)) => {
                        let charge = if settle { actual.min(amount) } else { 0 };
                        prop_assert_eq!(r.charged.units(), charge);
                        m.held -= amount;
                        m.available += amount - charge;
                        m.holds[i] = (amount, Some(r.status), charge);
                    }
                    // A repeat of the same kind of resolution returns the first outcome.
                    (Some(s), Ok(r)) => {
                        prop_assert_eq!(r.status, s);
                        prop_assert_eq!(r.charged.units(), charged);
                    }
                    // A different kind is refused and changes nothing.
                    (Some(s), Err(LedgerError::AlreadyResolved(got))) => prop_assert_eq!(got, s),
                    (state, other) => return Err(TestCaseError::fail(format!("{state:?} → {other:?}"))),
                }
            }
            Op::Settle(..) | Op::Release(_) => {}
            Op::Concurrent(batch) => {
                let tasks: Vec<_> = batch
                    .into_iter()
                    .map(|op| tokio::spawn(perform(l.clone(), org.clone(), ids.clone(), op)))
                    .collect();
                let mut outcomes = Vec::new();
                for t in tasks {
                    outcomes.extend(t.await.unwrap());
                }
                apply_batch(&mut m, &mut ids, outcomes)?;
            }
        }
        let b = l.balance(&org).await.unwrap();
        prop_assert_eq!((b.available.units(), b.held.units()), (m.available, m.held));
    }
    Ok(())
}

fn check(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let db = rt.block_on(TestDb::new(backend));
    let l = rt.block_on(SqlLedger::open(db.pool().clone(), LedgerConfig::default())).unwrap();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    let config = ProptestConfig {
        cases,
        // Failing seeds are kept in tests/model.proptest-regressions and replayed first.
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..24), |ops| rt.block_on(run_case(&db, &l, ops)));
    if let Err(e) = result {
        panic!("{backend:?}: {e}");
    }
    // The journal replay over every case at once (it scans the whole
    // journal, so once per run rather than once per case).
    let report = rt.block_on(l.verify()).unwrap();
    assert!(report.violations.is_empty(), "{backend:?}: {:?}", report.violations);
}

#[test]
fn ledger_matches_the_reference_model_on_sqlite() {
    check(Backend::Sqlite);
}

#[test]
fn ledger_matches_the_reference_model_on_postgres() {
    check(Backend::Postgres);
}
