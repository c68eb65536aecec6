//! The two hot operations, hold and resolve, as steps on one connection,
//! per backend: PostgreSQL calls its SQL function (one statement), SQLite
//! runs the same steps in Rust. They run inside a transaction the caller
//! opens — their own, or a batch's (group commit, `group.rs`).

use chrono::NaiveDateTime;
use diesel::SqliteConnection;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use modelroute_db::schema::{ledger_accounts, ledger_entries, ledger_holds, ledger_postings};
use modelroute_db::{DbConn, DbPool, PgConn, SqliteConn};
use modelroute_types::{EntryId, HoldId, Money, OrgId};

use crate::accounts::{Account, Kind};
use crate::sql::{HoldOutcome, HoldRow, NewEntry, Postings, ResolveOutcome, posting_rows, resolution_memo};
use crate::{HoldStatus, LedgerError};

/// A hold to place: its row and its entry's id.
#[derive(Clone)]
pub(crate) struct HoldArgs {
    pub(crate) row: HoldRow,
    pub(crate) entry_id: EntryId,
    pub(crate) now: NaiveDateTime,
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
    let out: HoldOutcome =
        diesel::sql_query("SELECT outcome, available FROM ledger_hold($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind::<Text, _>(&a.row.id)
            .bind::<Text, _>(a.entry_id.as_str())
            .bind::<Text, _>(&a.row.org_id)
            .bind::<Text, _>(available.id.as_str())
            .bind::<Text, _>(held.id.as_str())
            .bind::<BigInt, _>(a.row.amount)
            .bind::<Text, _>(&a.row.reference)
            .bind::<Nullable<Text>, _>(a.row.idempotency_key.as_deref())
            .bind::<Timestamp, _>(a.now)
            .bind::<Timestamp, _>(a.row.expires_at)
            .get_result(conn)
            .await?;
    Ok(match out.outcome.as_str() {
        "placed" => HoldDone::Placed,
        "exists" => HoldDone::Exists,
        _ => HoldDone::Insufficient(out.available.unwrap_or(0)),
    })
}

/// Applies `postings` of `entry` on SQLite: the entry row, each balance
/// change (a debit of a customer account guarded: never below zero), the
/// postings in one statement. Inside SQLite's single-writer transaction the
/// caller has already checked the guard, so a failure here is a bug or a
/// broken database, and the caller's transaction rolls everything back.
fn write_entry_sqlite(
    conn: &mut SqliteConnection,
    entry: &NewEntry<'_>,
    postings: &Postings,
    now: NaiveDateTime,
) -> Result<(), LedgerError> {
    use diesel::RunQueryDsl as _;
    if postings.iter().map(|(_, a)| *a).sum::<i64>() != 0 {
        return Err(LedgerError::Unbalanced);
    }
    diesel::insert_into(ledger_entries::table).values(entry).execute(conn)?;
    for (account, amount) in postings.iter().filter(|(_, a)| *a != 0) {
        let target = ledger_accounts::table.find(account.id.as_str());
        let set =
            (ledger_accounts::balance.eq(ledger_accounts::balance + *amount), ledger_accounts::updated_at.eq(now));
        let n = if *amount < 0 && account.is_customer() {
            diesel::update(target.filter(ledger_accounts::balance.ge(-*amount))).set(set).execute(conn)?
        } else {
            diesel::update(target).set(set).execute(conn)?
        };
        if n != 1 {
            return Err(LedgerError::InsufficientBalance {
                needed: Money::from_units(-*amount),
                available: Money::ZERO,
            });
        }
    }
    diesel::insert_into(ledger_postings::table).values(&posting_rows(entry.id, postings)).execute(conn)?;
    Ok(())
}

/// On SQLite's own (blocking) thread, inside a transaction (SQLite's one
/// writer holds the lock): reads the balance, decides, and only then
/// writes — a refusal writes nothing.
pub(crate) fn hold_sqlite(conn: &mut SqliteConnection, a: &HoldArgs) -> Result<HoldDone, LedgerError> {
    use diesel::RunQueryDsl as _;
    if let Some(key) = &a.row.idempotency_key {
        let exists: i64 = ledger_holds::table.filter(ledger_holds::idempotency_key.eq(key)).count().get_result(conn)?;
        if exists > 0 {
            return Ok(HoldDone::Exists);
        }
    }
    let org = OrgId::from_trusted(a.row.org_id.clone());
    let available = Account::org(&org, Kind::Available);
    let have: i64 = ledger_accounts::table
        .find(available.id.as_str())
        .select(ledger_accounts::balance)
        .first(conn)
        .optional()?
        .unwrap_or(0);
    // The admission decision.
    if have < a.row.amount {
        return Ok(HoldDone::Insufficient(have));
    }
    let postings: Postings = vec![(available, -a.row.amount), (Account::org(&org, Kind::Held), a.row.amount)];
    let entry = NewEntry {
        id: a.entry_id.as_str(),
        kind: "hold",
        org_id: Some(&a.row.org_id),
        hold_id: Some(&a.row.id),
        idempotency_key: None,
        memo: &a.row.reference,
        created_at: a.now,
    };
    write_entry_sqlite(conn, &entry, &postings, a.now)?;
    diesel::insert_into(ledger_holds::table).values(&a.row).execute(conn)?;
    Ok(HoldDone::Placed)
}

pub(crate) async fn resolve_pg(conn: &mut PgConn, a: &ResolveArgs) -> Result<ResolveDone, LedgerError> {
    use diesel_async::RunQueryDsl as _;
    let out: ResolveOutcome =
        diesel::sql_query("SELECT status, amount, charged, resolved_now FROM ledger_resolve($1, $2, $3, $4, $5, $6)")
            .bind::<Text, _>(a.id.as_str())
            .bind::<Text, _>(a.status.as_str())
            .bind::<Nullable<BigInt>, _>(a.requested.map(Money::units))
            .bind::<Text, _>(a.entry_id.as_str())
            .bind::<Text, _>(Account::revenue_for(a.id.as_str()).id.as_str())
            .bind::<Timestamp, _>(a.now)
            .get_result(conn)
            .await?;
    Ok(ResolveDone {
        found: out.status.is_some(),
        resolved_now: out.resolved_now,
        amount: out.amount.unwrap_or(0),
        charged: out.charged.unwrap_or(0),
    })
}

/// On SQLite's own thread, inside its transaction (see [`hold_sqlite`]):
/// the hold's state read here is the truth until the transaction ends.
pub(crate) fn resolve_sqlite(conn: &mut SqliteConnection, a: &ResolveArgs) -> Result<ResolveDone, LedgerError> {
    use diesel::RunQueryDsl as _;
    let row: Option<HoldRow> =
        ledger_holds::table.find(a.id.as_str()).select(HoldRow::as_select()).first(conn).optional()?;
    let Some(row) = row else {
        return Ok(ResolveDone { found: false, resolved_now: false, amount: 0, charged: 0 });
    };
    if row.status != HoldStatus::Held.as_str() {
        return Ok(ResolveDone { found: true, resolved_now: false, amount: row.amount, charged: 0 });
    }
    let amount = row.amount;
    let asked = a.requested.map_or(0, Money::units);
    let charge = asked.min(amount);
    let overage = asked.saturating_sub(amount);
    let org = OrgId::from_trusted(row.org_id.clone());
    let postings: Postings = vec![
        (Account::org(&org, Kind::Held), -amount),
        (Account::revenue_for(&row.id), charge),
        (Account::org(&org, Kind::Available), amount - charge),
    ];
    let memo = resolution_memo(a.status, overage);
    let entry = NewEntry {
        id: a.entry_id.as_str(),
        kind: a.status.as_str(),
        org_id: Some(&row.org_id),
        hold_id: Some(&row.id),
        idempotency_key: None,
        memo: &memo,
        created_at: a.now,
    };
    // A crash here (the crash test) must leave nothing: nothing is committed yet.
    modelroute_types::failpoint("ledger.resolve.in_transaction");
    write_entry_sqlite(conn, &entry, &postings, a.now)?;
    let settled_amount = (a.status == HoldStatus::Settled).then_some(charge);
    // Resolved exactly once: the update still insists on `held`.
    let won =
        diesel::update(ledger_holds::table.find(&row.id).filter(ledger_holds::status.eq(HoldStatus::Held.as_str())))
            .set((
                ledger_holds::status.eq(a.status.as_str()),
                ledger_holds::settled_amount.eq(settled_amount),
                ledger_holds::resolved_at.eq(a.now),
                ledger_holds::resolve_entry_id.eq(Some(entry.id)),
            ))
            .execute(conn)?;
    if won != 1 {
        return Err(LedgerError::AlreadyResolved(HoldStatus::Held));
    }
    Ok(ResolveDone { found: true, resolved_now: true, amount, charged: charge })
}

/// Runs `task` with the SQLite connection itself on its blocking thread:
/// one thread hop for the whole operation (or batch), not one per statement.
pub(crate) async fn on_sqlite_thread<R: Send + 'static>(
    conn: &mut SqliteConn,
    task: impl FnOnce(&mut SqliteConnection) -> Result<R, LedgerError> + Send + 'static,
) -> Result<R, LedgerError> {
    conn.spawn_blocking(move |c| Ok(task(c))).await?
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
        DbConn::Sqlite(mut c) => {
            let a = a.clone();
            on_sqlite_thread(&mut c, move |conn| conn.immediate_transaction(|t| hold_sqlite(t, &a))).await
        }
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
        DbConn::Sqlite(mut c) => {
            let a = a.clone();
            on_sqlite_thread(&mut c, move |conn| conn.immediate_transaction(|t| resolve_sqlite(t, &a))).await
        }
    }
}
