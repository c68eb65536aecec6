//! The two hot operations, hold and resolve, per backend: PostgreSQL calls
//! its SQL function (one statement, its own transaction); SQLite applies
//! them set-wise on the connection's own thread (`batch.rs`), alone or as a
//! batch (group commit, `group.rs`).

use chrono::NaiveDateTime;
use diesel::SqliteConnection;
use modelroute_db::{DbConn, DbPool, PgConn, SqliteConn};
use modelroute_types::{EntryId, HoldId, Money, OrgId, time};

use crate::accounts::{Account, Kind};
use crate::batch::{self, Op, Outcome};
use crate::pgcall::{Arg, Call};
use crate::sql::{HoldOutcome, HoldRow, ResolveOutcome};
use crate::{HoldStatus, LedgerError};

/// A hold to place: its row and its entry's id.
#[derive(Clone)]
pub(crate) struct HoldArgs {
    pub(crate) row: HoldRow,
    pub(crate) entry_id: EntryId,
    pub(crate) now: NaiveDateTime,
    /// `created_at` and `expires_at` as SQLite stores them, formatted by
    /// the caller rather than on SQLite's one writer thread.
    pub(crate) stamps: (String, String),
}

/// What placing a hold did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldDone {
    Placed,
    /// A hold with the idempotency key exists (nothing written).
    Exists,
    /// Refused: the available balance (in nano units) did not cover it.
    Insufficient(i64),
}

/// A resolution to make.
#[derive(Clone)]
pub(crate) struct ResolveArgs {
    pub(crate) id: HoldId,
    pub(crate) requested: Option<Money>,
    pub(crate) status: HoldStatus,
    pub(crate) entry_id: EntryId,
    pub(crate) now: NaiveDateTime,
    /// `now` as SQLite stores it (see [`HoldArgs::stamps`]).
    pub(crate) stamp: String,
}

/// What resolving did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResolveDone {
    /// The hold exists.
    pub(crate) found: bool,
    /// This call resolved it (else it was already resolved).
    pub(crate) resolved_now: bool,
    /// The hold's amount.
    pub(crate) amount: i64,
    /// What was charged.
    pub(crate) charged: i64,
}

pub(crate) async fn hold_pg(conn: &mut PgConn, a: &HoldArgs) -> Result<HoldDone, LedgerError> {
    use diesel_async::RunQueryDsl as _;
    let org = OrgId::from_trusted(a.row.org_id.clone());
    let (available, held) = (Account::org(&org, Kind::Available), Account::org(&org, Kind::Held));
    let call = Call {
        head: "SELECT outcome, available FROM ledger_hold(",
        args: vec![
            Arg::Text(&a.row.id),
            Arg::Text(a.entry_id.as_str()),
            Arg::Text(&a.row.org_id),
            Arg::Text(available.id.as_str()),
            Arg::Text(held.id.as_str()),
            Arg::Int(&a.row.amount),
            Arg::Text(&a.row.reference),
            Arg::OptText(&a.row.idempotency_key),
            Arg::Time(&a.now),
            Arg::Time(&a.row.expires_at),
        ],
    };
    let out: HoldOutcome = call.get_result(conn).await?;
    Ok(match out.outcome.as_str() {
        "placed" => HoldDone::Placed,
        "exists" => HoldDone::Exists,
        _ => HoldDone::Insufficient(out.available.unwrap_or(0)),
    })
}

pub(crate) async fn resolve_pg(conn: &mut PgConn, a: &ResolveArgs) -> Result<ResolveDone, LedgerError> {
    use diesel_async::RunQueryDsl as _;
    let requested = a.requested.map(Money::units);
    let revenue = Account::revenue_for(a.id.as_str());
    let call = Call {
        head: "SELECT status, amount, charged, resolved_now FROM ledger_resolve(",
        args: vec![
            Arg::Text(a.id.as_str()),
            Arg::Text(a.status.as_str()),
            Arg::OptInt(&requested),
            Arg::Text(a.entry_id.as_str()),
            Arg::Text(revenue.id.as_str()),
            Arg::Time(&a.now),
        ],
    };
    let out: ResolveOutcome = call.get_result(conn).await?;
    Ok(ResolveDone {
        found: out.status.is_some(),
        resolved_now: out.resolved_now,
        amount: out.amount.unwrap_or(0),
        charged: out.charged.unwrap_or(0),
    })
}

/// Runs `task` with the SQLite connection itself on its blocking thread:
/// one thread hop for the whole operation (or batch), not one per statement.
pub(crate) async fn on_sqlite_thread<R: Send + 'static>(
    conn: &mut SqliteConn,
    task: impl FnOnce(&mut SqliteConnection) -> Result<R, LedgerError> + Send + 'static,
) -> Result<R, LedgerError> {
    conn.spawn_blocking(move |c| Ok(task(c))).await?
}

/// Applies `ops` as one batch in one transaction on SQLite's own thread.
/// The operations come back with the outcome, so a failed batch can run
/// them again one by one without having copied them.
pub(crate) async fn apply_on_sqlite(
    conn: &mut SqliteConn,
    ops: Vec<Op>,
) -> Result<(Vec<Op>, Result<Vec<Outcome>, LedgerError>), LedgerError> {
    on_sqlite_thread(conn, move |c| {
        let refs: Vec<&Op> = ops.iter().collect();
        let outcomes = c.immediate_transaction(|t| batch::apply(t, &refs, time::now()));
        Ok((ops, outcomes))
    })
    .await
}

/// One operation alone, in its own transaction.
async fn apply_alone(conn: &mut SqliteConn, op: Op) -> Result<Outcome, LedgerError> {
    let (_, outcomes) = apply_on_sqlite(conn, vec![op]).await?;
    outcomes?.pop().ok_or(LedgerError::Inconsistent("an operation had no outcome"))
}

/// Whether PostgreSQL aborted the statement to break a deadlock or a
/// serialization conflict: nothing of it was written, so it can run again.
pub(crate) fn retryable(e: &LedgerError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        LedgerError::Db(modelroute_db::DbError::Query(Error::DatabaseError(kind, info))) => {
            matches!(kind, DatabaseErrorKind::SerializationFailure) || info.message().contains("deadlock detected")
        }
        _ => false,
    }
}

/// Attempts of one operation that PostgreSQL aborted to break a deadlock.
const ATTEMPTS: usize = 5;

/// Runs `op` again while PostgreSQL aborts it to break a deadlock (nothing
/// of an aborted attempt was written), up to [`ATTEMPTS`] times.
async fn retrying<T, F: Future<Output = Result<T, LedgerError>>>(mut op: impl FnMut() -> F) -> Result<T, LedgerError> {
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < ATTEMPTS && retryable(&e) => attempt += 1,
            other => return other,
        }
    }
}

/// One hold in its own transaction.
pub(crate) async fn run_hold_alone(pool: &DbPool, a: &HoldArgs) -> Result<HoldDone, LedgerError> {
    retrying(|| hold_once(pool, a)).await
}

async fn hold_once(pool: &DbPool, a: &HoldArgs) -> Result<HoldDone, LedgerError> {
    match pool.get().await? {
        DbConn::Postgres(mut c) => {
            let c: &mut PgConn = &mut c;
            hold_pg(c, a).await
        }
        DbConn::Sqlite(mut c) => apply_alone(&mut c, Op::Hold(a.clone())).await?.into_hold(),
    }
}

/// One resolution in its own transaction.
pub(crate) async fn run_resolve_alone(pool: &DbPool, a: &ResolveArgs) -> Result<ResolveDone, LedgerError> {
    retrying(|| resolve_once(pool, a)).await
}

async fn resolve_once(pool: &DbPool, a: &ResolveArgs) -> Result<ResolveDone, LedgerError> {
    match pool.get().await? {
        DbConn::Postgres(mut c) => {
            let c: &mut PgConn = &mut c;
            // One statement: atomic on its own.
            resolve_pg(c, a).await
        }
        DbConn::Sqlite(mut c) => apply_alone(&mut c, Op::Resolve(a.clone())).await?.into_resolve(),
    }
}
