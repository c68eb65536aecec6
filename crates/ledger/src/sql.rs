//! The ledger over the database.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{ledger_accounts, ledger_entries, ledger_holds, ledger_postings};
use modelroute_db::{DbPool, db_run, db_transaction, is_unique_violation};
use modelroute_types::{EntryId, HoldId, Money, OrgId, time};
use serde::Serialize;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::{Account, Kind, REVENUE_SHARDS};
use crate::batch::stamp;
use crate::group::GroupCommit;
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, run_hold_alone, run_resolve_alone};
use crate::{Balance, CreditSource, Hold, HoldRequest, HoldStatus, Ledger, LedgerConfig, LedgerError, Resolution};

/// The ledger stored in the database (SQLite or PostgreSQL).
#[derive(Debug, Clone)]
pub struct SqlLedger {
    pool: DbPool,
    config: LedgerConfig,
    group: Option<Arc<GroupCommit>>,
}

#[derive(Insertable)]
#[diesel(table_name = ledger_accounts)]
struct NewAccount<'a> {
    id: &'a str,
    code: &'a str,
    org_id: Option<&'a str>,
    kind: &'a str,
    currency: &'a str,
    balance: i64,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = ledger_entries)]
pub(crate) struct NewEntry<'a> {
    pub(crate) id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) org_id: Option<&'a str>,
    pub(crate) hold_id: Option<&'a str>,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) memo: &'a str,
    pub(crate) created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = ledger_postings)]
pub(crate) struct NewPosting {
    entry_id: String,
    account_id: String,
    amount: i64,
}

#[derive(Queryable, Selectable, Insertable, Clone)]
#[diesel(table_name = ledger_holds)]
pub(crate) struct HoldRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) amount: i64,
    pub(crate) status: String,
    pub(crate) reference: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) hold_entry_id: String,
    pub(crate) resolve_entry_id: Option<String>,
    pub(crate) settled_amount: Option<i64>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) expires_at: NaiveDateTime,
    pub(crate) resolved_at: Option<NaiveDateTime>,
}

impl HoldRow {
    fn to_hold(&self) -> Result<Hold, LedgerError> {
        Ok(Hold {
            id: HoldId::from_trusted(self.id.clone()),
            org_id: OrgId::from_trusted(self.org_id.clone()),
            amount: Money::from_units(self.amount),
            status: HoldStatus::try_from(self.status.as_str())?,
            reference: self.reference.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            settled_amount: self.settled_amount.map(Money::from_units),
        })
    }

    /// The outcome a replayed resolution returns.
    fn resolution(&self) -> Result<Resolution, LedgerError> {
        let charged = self.settled_amount.unwrap_or(0);
        let entry =
            self.resolve_entry_id.clone().ok_or(LedgerError::Inconsistent("a resolved hold without its entry"))?;
        Ok(Resolution {
            hold_id: HoldId::from_trusted(self.id.clone()),
            entry_id: EntryId::from_trusted(entry),
            status: HoldStatus::try_from(self.status.as_str())?,
            charged: Money::from_units(charged),
            released: Money::from_units(self.amount - charged),
            overage: Money::ZERO,
        })
    }
}

/// The postings of one entry, as (account, signed amount). Zero amounts are
/// skipped when written.
pub(crate) type Postings = Vec<(Account, i64)>;

pub(crate) fn posting_rows(entry_id: &str, postings: &Postings) -> Vec<NewPosting> {
    postings
        .iter()
        .filter(|(_, amount)| *amount != 0)
        .map(|(a, amount)| NewPosting {
            entry_id: entry_id.to_owned(),
            account_id: a.id.as_str().to_owned(),
            amount: *amount,
        })
        .collect()
}

/// Writes an entry: the entry row, the balance changes, the postings.
///
/// Balance rows are updated in ascending account-id order in every entry,
/// so concurrent transactions never wait on each other in a cycle.
///
/// The overspend guard lives here, so every movement gets it: a posting that
/// debits a customer account is the conditional update
/// `balance = balance + amount WHERE balance >= -amount`, and when it matches
/// no row the whole transaction fails with `InsufficientBalance`. Under
/// PostgreSQL's row lock or SQLite's `BEGIN IMMEDIATE` the check and the
/// debit are one atomic step. A macro, not a function, so that it is
/// compiled once per backend inside `db_transaction!`.
macro_rules! post_entry {
    ($conn:ident, $entry:expr, $postings:expr, $now:expr) => {{
        let entry: &NewEntry<'_> = $entry;
        let postings: &Postings = $postings;
        if postings.iter().map(|(_, a)| *a).sum::<i64>() != 0 {
            return Err(LedgerError::Unbalanced);
        }
        diesel::insert_into(ledger_entries::table).values(entry).execute($conn).await?;
        // Lock accounts in one global order (by id): a hold touches
        // available→held and a settlement held→available, and on PostgreSQL
        // opposite orders deadlock under concurrency.
        let mut ordered: Vec<&(Account, i64)> = postings.iter().filter(|(_, a)| *a != 0).collect();
        ordered.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        for (account, amount) in ordered {
            let target = ledger_accounts::table.find(account.id.as_str());
            let set =
                (ledger_accounts::balance.eq(ledger_accounts::balance + *amount), ledger_accounts::updated_at.eq($now));
            let n = if *amount < 0 && account.is_customer() {
                diesel::update(target.filter(ledger_accounts::balance.ge(-*amount))).set(set).execute($conn).await?
            } else {
                diesel::update(target).set(set).execute($conn).await?
            };
            if n != 1 {
                let have: Option<i64> = ledger_accounts::table
                    .find(account.id.as_str())
                    .select(ledger_accounts::balance)
                    .first($conn)
                    .await
                    .optional()?;
                return Err(LedgerError::InsufficientBalance {
                    needed: Money::from_units(-*amount),
                    available: Money::from_units(have.unwrap_or(0)),
                });
            }
        }
        // One row at a time: diesel's batch insert is not available on SQLite
        // through the async wrapper, and an entry has two or three postings.
        for row in posting_rows(entry.id, postings) {
            diesel::insert_into(ledger_postings::table).values(row).execute($conn).await?;
        }
    }};
}

/// One journal entry as an org sees it: what it did to the org's balances.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JournalLine {
    /// The entry.
    pub id: EntryId,
    /// `hold`, `settled`, `released`, `expired`, `credit`.
    pub kind: String,
    /// The hold it belongs to, if any.
    pub hold_id: Option<String>,
    /// Its memo.
    pub memo: String,
    /// When it was posted.
    pub created_at: NaiveDateTime,
    /// The change to the available balance.
    pub available: Money,
    /// The change to the held balance.
    pub held: Money,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Journal entries checked.
    pub entries: i64,
    /// Accounts checked.
    pub accounts: i64,
    /// Every violated invariant, in words. Empty when the ledger is sound.
    pub violations: Vec<String>,
}

#[derive(QueryableByName)]
struct CodeAmount {
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
}

/// What `ledger_hold()` (PostgreSQL) answers.
#[derive(QueryableByName)]
pub(crate) struct HoldOutcome {
    #[diesel(sql_type = Text)]
    pub(crate) outcome: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) available: Option<i64>,
}

/// What `ledger_resolve()` (PostgreSQL) answers.
#[derive(QueryableByName)]
pub(crate) struct ResolveOutcome {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) amount: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) charged: Option<i64>,
    #[diesel(sql_type = Bool)]
    pub(crate) resolved_now: bool,
}

/// The memo of a resolution entry.
pub(crate) fn resolution_memo(status: HoldStatus, overage: i64) -> String {
    if overage > 0 {
        format!("{} overage {overage} nano-USD not charged", status.as_str())
    } else {
        status.as_str().to_owned()
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const UNBALANCED_ENTRIES: &str = "SELECT entry_id AS code, CAST(SUM(amount) AS BIGINT) AS amount \
     FROM ledger_postings GROUP BY entry_id HAVING SUM(amount) <> 0";
// One scan of the postings, summed per account (there is no index by account).
const BALANCES_NOT_REPLAYED: &str = "SELECT a.code AS code, a.balance AS amount FROM ledger_accounts a \
     LEFT JOIN (SELECT account_id, SUM(amount) AS total FROM ledger_postings GROUP BY account_id) p \
     ON p.account_id = a.id WHERE a.balance <> COALESCE(p.total, 0)";
const NEGATIVE_CUSTOMER_ACCOUNTS: &str = "SELECT code, balance AS amount FROM ledger_accounts \
     WHERE kind IN ('available', 'held') AND balance < 0";
const HELD_NOT_OPEN_HOLDS: &str = "SELECT a.code AS code, a.balance AS amount FROM ledger_accounts a \
     WHERE a.kind = 'held' AND a.balance <> (SELECT COALESCE(SUM(h.amount), 0) FROM ledger_holds h \
     WHERE h.org_id = a.org_id AND h.status = 'held')";

impl SqlLedger {
    /// The ledger over `pool`; creates the platform accounts if missing.
    ///
    /// # Errors
    /// A database failure.
    pub async fn open(pool: DbPool, config: LedgerConfig) -> Result<Self, LedgerError> {
        // Group commit is for SQLite (see `group.rs` for why not PostgreSQL).
        let group = (config.group_commit && pool.backend() == modelroute_db::Backend::Sqlite)
            .then(|| GroupCommit::start(&pool).map(Arc::new))
            .transpose()?;
        let ledger = Self { pool, config, group };
        ledger
            .create_accounts(&[
                Account::platform(Kind::Revenue),
                Account::platform(Kind::Grants),
                Account::platform(Kind::Adjustments),
                Account::platform(Kind::StripeClearing),
            ])
            .await?;
        let shards: Vec<Account> = (0..REVENUE_SHARDS).map(Account::revenue_shard).collect();
        ledger.create_accounts(&shards).await?;
        Ok(ledger)
    }

    /// Opens the accounts of a new org. Idempotent.
    ///
    /// # Errors
    /// A database failure.
    pub async fn open_org_accounts(&self, org: &OrgId) -> Result<(), LedgerError> {
        self.create_accounts(&[Account::org(org, Kind::Available), Account::org(org, Kind::Held)]).await
    }

    async fn create_accounts(&self, accounts: &[Account]) -> Result<(), LedgerError> {
        let now = time::now();
        let rows: Vec<NewAccount<'_>> = accounts
            .iter()
            .map(|a| NewAccount {
                id: a.id.as_str(),
                code: &a.code,
                org_id: a.org_id.as_ref().map(OrgId::as_str),
                kind: a.kind.as_str(),
                currency: &self.config.currency,
                balance: 0,
                created_at: now,
                updated_at: now,
            })
            .collect();
        for row in &rows {
            db_run!(self.pool, |conn| diesel::insert_into(ledger_accounts::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await)?;
        }
        Ok(())
    }

    async fn hold_by_key(&self, key: &str) -> Result<Option<HoldRow>, LedgerError> {
        Ok(db_run!(self.pool, |conn| ledger_holds::table
            .filter(ledger_holds::idempotency_key.eq(key))
            .select(HoldRow::as_select())
            .first(conn)
            .await
            .optional())?)
    }

    async fn hold_row(&self, id: &HoldId) -> Result<HoldRow, LedgerError> {
        let row: Option<HoldRow> = db_run!(self.pool, |conn| ledger_holds::table
            .find(id.as_str())
            .select(HoldRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.ok_or(LedgerError::HoldNotFound)
    }

    /// Places a hold in one transaction (shared with other operations under
    /// load: group commit); `None` when a hold with the request's
    /// idempotency key already exists. On PostgreSQL it is one statement
    /// (`ledger_hold()`); on SQLite the same steps in Rust.
    async fn place_hold(&self, req: &HoldRequest) -> Result<Option<HoldRow>, LedgerError> {
        if !req.amount.is_positive() {
            return Err(LedgerError::NonPositiveAmount(req.amount));
        }
        let now = time::now();
        let expires_in = req.expires_in.unwrap_or(Duration::from_secs(self.config.hold_timeout_secs));
        let expires_at = chrono::Duration::from_std(expires_in)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .ok_or(LedgerError::Overflow)?;
        let entry_id = EntryId::new();
        let row = HoldRow {
            id: HoldId::new().into_string(),
            org_id: req.org_id.as_str().to_owned(),
            amount: req.amount.units(),
            status: HoldStatus::Held.as_str().to_owned(),
            reference: req.reference.clone(),
            idempotency_key: req.idempotency_key.clone(),
            hold_entry_id: entry_id.as_str().to_owned(),
            resolve_entry_id: None,
            settled_amount: None,
            created_at: now,
            expires_at,
            resolved_at: None,
        };
        let stamps = (stamp(row.created_at), stamp(row.expires_at));
        let args = HoldArgs { row, entry_id, now, stamps };
        let done = match &self.group {
            Some(group) => group.hold(args.clone()).await?,
            None => run_hold_alone(&self.pool, &args).await?,
        };
        match done {
            HoldDone::Placed => Ok(Some(args.row)),
            HoldDone::Exists => Ok(None),
            HoldDone::Insufficient(have) => {
                Err(LedgerError::InsufficientBalance { needed: req.amount, available: Money::from_units(have) })
            }
        }
    }

    /// Resolves a hold: charges `charge` (already capped) and releases the
    /// rest. Exactly once: a lost race returns the winner's outcome.
    async fn resolve(
        &self,
        id: &HoldId,
        requested: Option<Money>,
        status: HoldStatus,
    ) -> Result<Resolution, LedgerError> {
        if requested.is_some_and(|a| a.units() < 0) {
            return Err(LedgerError::NonPositiveAmount(requested.unwrap_or_default()));
        }
        let now = time::now();
        let entry_id = EntryId::new();
        let args =
            ResolveArgs { id: id.clone(), requested, status, entry_id: entry_id.clone(), now, stamp: stamp(now) };
        let done = match &self.group {
            Some(group) => group.resolve(args).await?,
            None => run_resolve_alone(&self.pool, &args).await?,
        };
        if !done.found {
            return Err(LedgerError::HoldNotFound);
        }
        if !done.resolved_now {
            return replay(&self.hold_row(id).await?, status);
        }
        Ok(resolution(id, entry_id, status, requested, done))
    }

    /// Every org's available balance, in one query (orgs without accounts
    /// are absent: their balance is zero). For periodic checks over all
    /// orgs, which would otherwise ask once per org.
    ///
    /// # Errors
    /// A database failure.
    pub async fn available_balances(&self) -> Result<HashMap<OrgId, Money>, LedgerError> {
        let rows: Vec<(Option<String>, i64)> = db_run!(self.pool, |conn| ledger_accounts::table
            .filter(ledger_accounts::kind.eq(Kind::Available.as_str()))
            .filter(ledger_accounts::org_id.is_not_null())
            .select((ledger_accounts::org_id, ledger_accounts::balance))
            .load(conn)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(org, balance)| Some((OrgId::from_trusted(org?), Money::from_units(balance))))
            .collect())
    }

    /// The org's most recent journal entries (newest first), each with its
    /// effect on the org's available and held balances.
    ///
    /// # Errors
    /// A database failure.
    pub async fn recent_entries(&self, org: &OrgId, limit: usize) -> Result<Vec<JournalLine>, LedgerError> {
        self.entries_before(org, None, limit).await
    }

    /// The org's whole journal, a page at a time (newest first): the
    /// entries older than `before` (the last line of the previous page),
    /// at most `limit` (1–200).
    ///
    /// # Errors
    /// A database failure.
    pub async fn entries_before(
        &self,
        org: &OrgId,
        before: Option<&JournalLine>,
        limit: usize,
    ) -> Result<Vec<JournalLine>, LedgerError> {
        let limit = i64::try_from(limit.clamp(1, 200)).unwrap_or(200);
        // No page before: a moment after every entry (9999-12-31, which both
        // backends compare as a timestamp; SQLite compares text).
        let end_of_time =
            chrono::NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or_default().and_time(chrono::NaiveTime::MIN);
        let (at, id) = before.map_or((end_of_time, String::new()), |l| (l.created_at, l.id.to_string()));
        let entries: Vec<(String, String, Option<String>, String, NaiveDateTime)> =
            db_run!(self.pool, |conn| ledger_entries::table
                .filter(ledger_entries::org_id.eq(org.as_str()))
                .filter(
                    ledger_entries::created_at
                        .lt(at)
                        .or(ledger_entries::created_at.eq(at).and(ledger_entries::id.lt(&id))),
                )
                .order((ledger_entries::created_at.desc(), ledger_entries::id.desc()))
                .limit(limit)
                .select((
                    ledger_entries::id,
                    ledger_entries::kind,
                    ledger_entries::hold_id,
                    ledger_entries::memo,
                    ledger_entries::created_at,
                ))
                .load(conn)
                .await)?;
        let ids: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let available = Account::org(org, Kind::Available);
        let held = Account::org(org, Kind::Held);
        let accounts = [available.id.as_str(), held.id.as_str()];
        let postings: Vec<(String, String, i64)> = db_run!(self.pool, |conn| ledger_postings::table
            .filter(ledger_postings::entry_id.eq_any(&ids))
            .filter(ledger_postings::account_id.eq_any(accounts))
            .select((ledger_postings::entry_id, ledger_postings::account_id, ledger_postings::amount))
            .load(conn)
            .await)?;
        let delta = |entry: &str, account: &str| {
            Money::from_units(
                postings.iter().filter(|(e, a, _)| e == entry && a == account).map(|(_, _, amount)| *amount).sum(),
            )
        };
        Ok(entries
            .into_iter()
            .map(|(id, kind, hold_id, memo, created_at)| JournalLine {
                available: delta(&id, available.id.as_str()),
                held: delta(&id, held.id.as_str()),
                id: EntryId::from_trusted(id),
                kind,
                hold_id,
                memo,
                created_at,
            })
            .collect())
    }

    /// Releases every open hold past its expiry; returns how many.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep_expired(&self, now: NaiveDateTime) -> Result<usize, LedgerError> {
        let ids: Vec<String> = db_run!(self.pool, |conn| ledger_holds::table
            // A literal, not a parameter, so the partial index of open holds applies.
            .filter(diesel::dsl::sql::<Bool>("status = 'held'"))
            .filter(ledger_holds::expires_at.le(now))
            .select(ledger_holds::id)
            .limit(1000)
            .load(conn)
            .await)?;
        let mut released = 0;
        for id in ids {
            let r = self.resolve(&HoldId::from_trusted(id), None, HoldStatus::Expired).await?;
            if r.status == HoldStatus::Expired {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Moves the expiry of the open holds among `holds` to `until` (only
    /// ever later), in statements of at most 500 ids; answers how many.
    async fn renew_holds(&self, holds: &[HoldId], until: NaiveDateTime) -> Result<usize, LedgerError> {
        let mut renewed = 0;
        for chunk in holds.chunks(500) {
            let ids: Vec<&str> = chunk.iter().map(HoldId::as_str).collect();
            renewed += db_run!(self.pool, |conn| diesel::update(
                ledger_holds::table
                    .filter(ledger_holds::id.eq_any(&ids))
                    // A literal, not a parameter, so the partial index of open holds applies.
                    .filter(diesel::dsl::sql::<Bool>("status = 'held'"))
                    .filter(ledger_holds::expires_at.lt(until))
            )
            .set(ledger_holds::expires_at.eq(until))
            .execute(conn)
            .await)?;
        }
        Ok(renewed)
    }

    /// Replays the journal and checks the invariants: every entry sums to
    /// zero, every stored balance equals the sum of its postings, no customer
    /// account is negative, and each org's held balance equals its open holds.
    ///
    /// # Errors
    /// A database failure.
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let mut report = VerifyReport::default();
        let checks: [(&str, &str); 4] = [
            (UNBALANCED_ENTRIES, "entry does not sum to zero"),
            (BALANCES_NOT_REPLAYED, "account balance differs from the replay of its postings"),
            (NEGATIVE_CUSTOMER_ACCOUNTS, "customer account is negative"),
            (HELD_NOT_OPEN_HOLDS, "held balance differs from the sum of open holds"),
        ];
        for (sql, what) in checks {
            let rows: Vec<CodeAmount> = db_run!(self.pool, |conn| diesel::sql_query(sql).load(conn).await)?;
            report.violations.extend(rows.into_iter().map(|r| format!("{what}: {} ({})", r.code, r.amount)));
        }
        let count = |table: &'static str| format!("SELECT COUNT(*) AS n FROM {table}");
        let entries: Vec<Count> =
            db_run!(self.pool, |conn| diesel::sql_query(count("ledger_entries")).load(conn).await)?;
        let accounts: Vec<Count> =
            db_run!(self.pool, |conn| diesel::sql_query(count("ledger_accounts")).load(conn).await)?;
        report.entries = entries.into_iter().next().map_or(0, |c| c.n);
        report.accounts = accounts.into_iter().next().map_or(0, |c| c.n);
        Ok(report)
    }
}

/// The outcome of a second attempt to resolve a hold: the first outcome when
/// it was the same kind of resolution, else a conflict.
fn replay(row: &HoldRow, wanted: HoldStatus) -> Result<Resolution, LedgerError> {
    let status = HoldStatus::try_from(row.status.as_str())?;
    let same = status == wanted || (wanted == HoldStatus::Released && status == HoldStatus::Expired);
    if same { row.resolution() } else { Err(LedgerError::AlreadyResolved(status)) }
}

impl SqlLedger {
    /// One entry moving `amount` (signed) between a platform account and the
    /// org's available balance; a debit is guarded (never below zero).
    /// Idempotent by key: a replay of the same request answers the first
    /// entry, another request under the key is a conflict.
    async fn post_to_available(
        &self,
        org: &OrgId,
        amount: Money,
        counter: Kind,
        kind: &str,
        memo: &str,
        idempotency_key: Option<String>,
    ) -> Result<EntryId, LedgerError> {
        self.open_org_accounts(org).await?;
        if let Some(key) = &idempotency_key
            && let Some(first) = self.credit_by_key(key, org).await?
        {
            return same_credit(first, org, amount, memo);
        }
        let now = time::now();
        let entry_id = EntryId::new();
        let entry = NewEntry {
            id: entry_id.as_str(),
            kind,
            org_id: Some(org.as_str()),
            hold_id: None,
            idempotency_key: idempotency_key.as_deref(),
            memo,
            created_at: now,
        };
        let postings: Postings =
            vec![(Account::platform(counter), -amount.units()), (Account::org(org, Kind::Available), amount.units())];
        let posted = db_transaction!(self.pool, |conn| {
            post_entry!(conn, &entry, &postings, now);
            Ok::<_, LedgerError>(())
        });
        match (posted, &idempotency_key) {
            (Ok(()), _) => Ok(entry_id),
            // A concurrent request with the same key committed first: its outcome.
            (Err(LedgerError::Db(modelroute_db::DbError::Query(e))), Some(key)) if is_unique_violation(&e) => {
                let first =
                    self.credit_by_key(key, org).await?.ok_or(LedgerError::Db(modelroute_db::DbError::Query(e)))?;
                same_credit(first, org, amount, memo)
            }
            (Err(e), _) => Err(e),
        }
    }
}

/// A credit entry found by its idempotency key: its id, org, memo and the
/// amount it put on the org's available account.
struct FirstCredit {
    id: String,
    org: Option<String>,
    memo: String,
    amount: i64,
}

impl SqlLedger {
    async fn credit_by_key(&self, key: &str, org: &OrgId) -> Result<Option<FirstCredit>, LedgerError> {
        let entry: Option<(String, Option<String>, String)> = db_run!(self.pool, |conn| ledger_entries::table
            .filter(ledger_entries::idempotency_key.eq(key))
            .select((ledger_entries::id, ledger_entries::org_id, ledger_entries::memo))
            .first(conn)
            .await
            .optional())?;
        let Some((id, entry_org, memo)) = entry else { return Ok(None) };
        let available = Account::org(org, Kind::Available);
        let amount: Option<i64> = db_run!(self.pool, |conn| ledger_postings::table
            .filter(ledger_postings::entry_id.eq(&id))
            .filter(ledger_postings::account_id.eq(available.id.as_str()))
            .select(ledger_postings::amount)
            .first(conn)
            .await
            .optional())?;
        Ok(Some(FirstCredit { id, org: entry_org, memo, amount: amount.unwrap_or_default() }))
    }
}

/// The first credit's outcome when the replay asks for the same thing;
/// otherwise the key was reused for another request (L7: 422).
fn same_credit(first: FirstCredit, org: &OrgId, amount: Money, memo: &str) -> Result<EntryId, LedgerError> {
    if first.org.as_deref() == Some(org.as_str()) && first.memo == memo && first.amount == amount.units() {
        Ok(EntryId::from_trusted(first.id))
    } else {
        Err(LedgerError::IdempotencyConflict)
    }
}

/// What resolving `id` did, when this call resolved it.
pub(crate) fn resolution(
    id: &HoldId,
    entry_id: EntryId,
    status: HoldStatus,
    requested: Option<Money>,
    done: crate::ops::ResolveDone,
) -> Resolution {
    let overage = requested.map_or(0, Money::units).saturating_sub(done.amount);
    if overage > 0 {
        tracing::warn!(hold_id = %id, overage, "settlement above hold; overage not charged");
    }
    Resolution {
        hold_id: id.clone(),
        entry_id,
        status,
        charged: Money::from_units(done.charged),
        released: Money::from_units(done.amount - done.charged),
        overage: Money::from_units(overage),
    }
}

impl Ledger for SqlLedger {
    fn settles_within_writer(&self) -> bool {
        self.group.is_some()
    }

    async fn hold(&self, request: HoldRequest) -> Result<Hold, LedgerError> {
        match self.place_hold(&request).await {
            Ok(Some(row)) => row.to_hold(),
            // The idempotency key was used: the first outcome, if the same request.
            Ok(None) => {
                let key = request.idempotency_key.as_deref().unwrap_or_default();
                let existing = self.hold_by_key(key).await?.ok_or(LedgerError::HoldNotFound)?;
                same_hold(&existing, &request)
            }
            // A concurrent request with the same key won the insert.
            Err(LedgerError::Db(modelroute_db::DbError::Query(e))) if is_unique_violation(&e) => {
                let key = request.idempotency_key.as_deref().unwrap_or_default();
                match self.hold_by_key(key).await? {
                    Some(existing) => same_hold(&existing, &request),
                    None => Err(LedgerError::Db(modelroute_db::DbError::Query(e))),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn settle(&self, hold: &HoldId, actual: Money) -> Result<Resolution, LedgerError> {
        self.resolve(hold, Some(actual), HoldStatus::Settled).await
    }

    async fn release(&self, hold: &HoldId) -> Result<Resolution, LedgerError> {
        self.resolve(hold, None, HoldStatus::Released).await
    }

    async fn credit(
        &self,
        org: &OrgId,
        amount: Money,
        source: CreditSource,
        idempotency_key: Option<String>,
    ) -> Result<EntryId, LedgerError> {
        if !amount.is_positive() {
            return Err(LedgerError::NonPositiveAmount(amount));
        }
        let (memo, counter) = match source {
            CreditSource::Grant => ("grant", Kind::Grants),
            CreditSource::Promo => ("promo", Kind::Grants),
            CreditSource::Stripe => ("stripe", Kind::StripeClearing),
        };
        self.post_to_available(org, amount, counter, "credit", memo, idempotency_key).await
    }

    async fn adjust(
        &self,
        org: &OrgId,
        amount: Money,
        reason: &str,
        idempotency_key: Option<String>,
    ) -> Result<EntryId, LedgerError> {
        if amount.units() == 0 {
            return Err(LedgerError::NonPositiveAmount(amount));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(LedgerError::InvalidReason);
        }
        let memo = format!("adjust: {reason}");
        self.post_to_available(org, amount, Kind::Adjustments, "adjust", &memo, idempotency_key).await
    }

    async fn renew(&self, holds: &[HoldId], until: NaiveDateTime) -> Result<usize, LedgerError> {
        self.renew_holds(holds, until).await
    }

    async fn get_hold(&self, id: &HoldId) -> Result<Hold, LedgerError> {
        self.hold_row(id).await?.to_hold()
    }

    async fn balance(&self, org: &OrgId) -> Result<Balance, LedgerError> {
        let available = Account::org(org, Kind::Available);
        let held = Account::org(org, Kind::Held);
        let ids = [available.id.as_str(), held.id.as_str()];
        let rows: Vec<(String, i64)> = db_run!(self.pool, |conn| ledger_accounts::table
            .filter(ledger_accounts::id.eq_any(ids))
            .select((ledger_accounts::id, ledger_accounts::balance))
            .load(conn)
            .await)?;
        let get = |id: &str| Money::from_units(rows.iter().find(|(i, _)| i == id).map_or(0, |(_, b)| *b));
        Ok(Balance { available: get(available.id.as_str()), held: get(held.id.as_str()) })
    }
}

fn same_hold(existing: &HoldRow, request: &HoldRequest) -> Result<Hold, LedgerError> {
    if existing.org_id == request.org_id.as_str() && existing.amount == request.amount.units() {
        existing.to_hold()
    } else {
        Err(LedgerError::IdempotencyConflict)
    }
}
