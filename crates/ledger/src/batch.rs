//! SQLite's hot path, set-wise: a batch of holds and resolutions — one
//! operation, or many that arrived together (group commit, `group.rs`) — is
//! applied in one transaction with a fixed number of statements whatever its
//! size: read what the batch needs (balances, holds, idempotency keys), decide
//! every operation in order in memory, then write every row of a kind with
//! statement (or a few, in chunks of fixed sizes: `rows.rs`). The rows are
//! bound parameters of statements that stay prepared.
//!
//! It runs on the connection's own thread inside `BEGIN IMMEDIATE`: SQLite's
//! one writer holds the lock from the first read to the commit, so what the
//! batch read is the truth while it decides (L2, L3), and a refusal writes
//! nothing. Each posting that debits a customer account is checked twice:
//! by the decision (in order, against the balance as the earlier operations
//! of the batch left it) and by the balance update's guard, which fails the
//! batch — nothing written — if the two ever disagree.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, SqliteConnection};
use modelroute_types::OrgId;

use crate::accounts::{Account, Kind};
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, ResolveDone};
use crate::rows::{self, Shape};
use crate::sql::resolution_memo;
use crate::{HoldStatus, LedgerError};

/// One operation of a batch.
#[expect(
    clippy::large_enum_variant,
    reason = "ops live briefly in one Vec per batch; a Box would cost an allocation per hold"
)]
pub(crate) enum Op {
    Hold(HoldArgs),
    Resolve(ResolveArgs),
}

/// What one operation of a batch did.
pub(crate) enum Outcome {
    Hold(HoldDone),
    Resolve(ResolveDone),
}

impl Outcome {
    /// A hold's outcome (the other kind is a bug).
    pub(crate) const fn into_hold(self) -> Result<HoldDone, LedgerError> {
        match self {
            Self::Hold(done) => Ok(done),
            Self::Resolve(_) => Err(LedgerError::Inconsistent("a hold answered as a resolution")),
        }
    }

    /// A resolution's outcome (the other kind is a bug).
    pub(crate) const fn into_resolve(self) -> Result<ResolveDone, LedgerError> {
        match self {
            Self::Resolve(done) => Ok(done),
            Self::Hold(_) => Err(LedgerError::Inconsistent("a resolution answered as a hold")),
        }
    }
}

const READ_KEYS: Shape = Shape::in_list("SELECT idempotency_key AS key FROM ledger_holds WHERE idempotency_key IN (");
const READ_HOLDS: Shape = Shape::in_list("SELECT id, org_id, amount, status FROM ledger_holds WHERE id IN (");
const READ_BALANCES: Shape = Shape::in_list("SELECT id, balance FROM ledger_accounts WHERE id IN (");
const INSERT_ENTRIES: Shape =
    Shape::values("INSERT INTO ledger_entries (id, kind, org_id, hold_id, memo, created_at) VALUES ", "");
const INSERT_POSTINGS: Shape = Shape::values("INSERT INTO ledger_postings (entry_id, account_id, amount) VALUES ", "");
const INSERT_HOLDS: Shape = Shape::values(
    "INSERT INTO ledger_holds (id, org_id, amount, status, reference, idempotency_key, hold_entry_id, \
     resolve_entry_id, settled_amount, created_at, expires_at, resolved_at) VALUES ",
    "",
);
// `+status`: the lookup goes by id (the primary key), not by the open-holds index.
const RESOLVE_HOLDS: Shape = Shape::values(
    "UPDATE ledger_holds SET status = j.column2, settled_amount = j.column3, resolved_at = j.column4, \
     resolve_entry_id = j.column5 FROM (VALUES ",
    ") AS j WHERE ledger_holds.id = j.column1 AND +ledger_holds.status = 'held'",
);
// The guard: a customer account (third column 1) never goes below zero.
const MOVE_BALANCES: Shape = Shape::values(
    "UPDATE ledger_accounts SET balance = balance + j.column2, updated_at = j.column4 FROM (VALUES ",
    ") AS j WHERE ledger_accounts.id = j.column1 AND (j.column3 = 0 OR ledger_accounts.balance + j.column2 >= 0)",
);

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    key: String,
}

#[derive(QueryableByName)]
struct HoldState {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    org_id: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Text)]
    status: String,
}

#[derive(QueryableByName)]
struct BalanceRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    balance: i64,
}

/// A hold as the batch knows it while deciding.
struct Known<'a> {
    org_id: &'a str,
    amount: i64,
    status: HoldStatus,
    /// Its index in [`Writes::new_holds`] when this batch placed it.
    placed_here: Option<usize>,
}

/// A timestamp as diesel stores it in SQLite (`%F %T%.f`), so rows written
/// here read back through diesel exactly.
pub(crate) fn stamp(t: NaiveDateTime) -> String {
    t.format("%F %T%.f").to_string()
}

/// A new hold's row: id, org, amount, status, reference, idempotency key,
/// hold entry, resolve entry, settled amount, created, expires, resolved.
type NewHold<'a> = (
    &'a str,
    &'a str,
    i64,
    &'static str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    &'a str,
    &'a str,
    Option<&'a str>,
);

/// An entry's row: id, kind, org, hold, memo, created.
type EntryRow<'a> = (&'a str, &'static str, &'a str, &'a str, Cow<'a, str>, &'a str);

/// Everything the batch writes, gathered while deciding; it borrows from
/// the operations and from what the batch read, so deciding allocates
/// little on the writer's thread.
#[derive(Default)]
struct Writes<'a> {
    entries: Vec<EntryRow<'a>>,
    /// entry, account, amount.
    postings: Vec<(&'a str, &'a str, i64)>,
    new_holds: Vec<NewHold<'a>>,
    /// Holds placed before this batch and resolved by it: id, status,
    /// settled amount, resolved at, resolve entry.
    resolved: Vec<(&'a str, &'static str, Option<i64>, &'a str, &'a str)>,
    /// Net change per account, and whether it is a customer account.
    deltas: HashMap<&'a str, (i64, bool)>,
}

/// A posting as the batch records it: account id, customer account or
/// not, signed amount.
type Posting<'a> = (&'a str, bool, i64);

impl<'a> Writes<'a> {
    /// Records an entry and its postings (L1: they must sum to zero).
    fn entry(&mut self, entry: EntryRow<'a>, postings: &[Posting<'a>]) -> Result<(), LedgerError> {
        if postings.iter().map(|(_, _, a)| *a).sum::<i64>() != 0 {
            return Err(LedgerError::Unbalanced);
        }
        for &(account, customer, amount) in postings.iter().filter(|(_, _, a)| *a != 0) {
            self.deltas.entry(account).or_insert((0, customer)).0 += amount;
            self.postings.push((entry.0, account, amount));
        }
        self.entries.push(entry);
        Ok(())
    }

    fn flush(self, conn: &mut SqliteConnection, now: NaiveDateTime) -> Result<(), LedgerError> {
        // Entries first: postings and holds refer to them (foreign keys).
        rows::execute(conn, &INSERT_ENTRIES, &self.entries)?;
        rows::execute(conn, &INSERT_POSTINGS, &self.postings)?;
        rows::execute(conn, &INSERT_HOLDS, &self.new_holds)?;
        // Resolved exactly once (L4): each update still insists on `held`.
        if rows::execute(conn, &RESOLVE_HOLDS, &self.resolved)? != self.resolved.len() {
            return Err(LedgerError::Inconsistent("a hold to resolve was not open"));
        }
        let now = stamp(now);
        let moves: Vec<(&str, i64, i64, &str)> = self
            .deltas
            .iter()
            .filter(|(_, (d, _))| *d != 0)
            .map(|(id, (d, customer))| (*id, *d, i64::from(*customer), now.as_str()))
            .collect();
        if rows::execute(conn, &MOVE_BALANCES, &moves)? != moves.len() {
            // The decision and the guard disagree: a bug or a broken
            // database. The caller's transaction rolls everything back.
            return Err(LedgerError::Inconsistent("a balance guard refused a decided posting"));
        }
        Ok(())
    }
}

/// The ids of the available and held accounts of every org the batch
/// touches, computed once per org per batch (each is a SHA-1).
struct OrgAccounts(HashMap<String, (String, String)>);

impl OrgAccounts {
    fn of<'o>(orgs: impl Iterator<Item = &'o str>) -> Self {
        let mut map = HashMap::new();
        for org in orgs {
            if !map.contains_key(org) {
                let id = OrgId::from_trusted(org.to_owned());
                let ids = (
                    Account::org(&id, Kind::Available).id.into_string(),
                    Account::org(&id, Kind::Held).id.into_string(),
                );
                map.insert(org.to_owned(), ids);
            }
        }
        Self(map)
    }

    fn get(&self, org: &str) -> Result<(&str, &str), LedgerError> {
        self.0
            .get(org)
            .map(|(available, held)| (available.as_str(), held.as_str()))
            .ok_or(LedgerError::Inconsistent("an org's accounts were not looked up"))
    }
}

/// Applies `ops` in order, inside the caller's `BEGIN IMMEDIATE`
/// transaction; one outcome per operation. An `Err` means the caller must
/// roll back: a refusal or a lost race is an outcome, not an error.
pub(crate) fn apply(conn: &mut SqliteConnection, ops: &[&Op], now: NaiveDateTime) -> Result<Vec<Outcome>, LedgerError> {
    let taken = read_keys(conn, ops)?;
    let loaded = read_holds(conn, ops)?;
    let accounts = OrgAccounts::of(
        ops.iter()
            .filter_map(|op| match op {
                Op::Hold(a) => Some(a.row.org_id.as_str()),
                Op::Resolve(_) => None,
            })
            .chain(loaded.iter().map(|h| h.org_id.as_str())),
    );
    let mut balances = read_balances(conn, ops, &accounts)?;
    let mut keys: HashSet<&str> = taken.iter().map(|k| k.key.as_str()).collect();
    let mut holds: HashMap<&str, Known<'_>> = loaded
        .iter()
        .map(|r| {
            let status = HoldStatus::try_from(r.status.as_str())?;
            Ok((r.id.as_str(), Known { org_id: &r.org_id, amount: r.amount, status, placed_here: None }))
        })
        .collect::<Result<_, LedgerError>>()?;
    let mut writes = Writes::default();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match op {
            Op::Hold(a) => Outcome::Hold(decide_hold(a, &mut keys, &mut holds, &mut balances, &accounts, &mut writes)?),
            Op::Resolve(a) => Outcome::Resolve(decide_resolve(a, &mut holds, &mut balances, &accounts, &mut writes)?),
        });
    }
    writes.flush(conn, now)?;
    Ok(out)
}

fn read_keys(conn: &mut SqliteConnection, ops: &[&Op]) -> Result<Vec<KeyRow>, LedgerError> {
    let wanted: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Hold(a) => a.row.idempotency_key.as_deref(),
            Op::Resolve(_) => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    rows::load(conn, &READ_KEYS, &wanted)
}

fn read_holds(conn: &mut SqliteConnection, ops: &[&Op]) -> Result<Vec<HoldState>, LedgerError> {
    let wanted: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Resolve(a) => Some(a.id.as_str()),
            Op::Hold(_) => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    rows::load(conn, &READ_HOLDS, &wanted)
}

/// The available balances of the orgs the batch's holds draw on.
fn read_balances<'a>(
    conn: &mut SqliteConnection,
    ops: &[&Op],
    accounts: &'a OrgAccounts,
) -> Result<HashMap<&'a str, i64>, LedgerError> {
    let mut wanted: Vec<&'a str> = Vec::new();
    for op in ops {
        if let Op::Hold(a) = op {
            wanted.push(accounts.get(&a.row.org_id)?.0);
        }
    }
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    wanted.sort_unstable();
    wanted.dedup();
    let found: Vec<BalanceRow> = rows::load(conn, &READ_BALANCES, &wanted)?;
    // An org without accounts has nothing to spend.
    let mut balances: HashMap<&'a str, i64> = wanted.iter().map(|id| (*id, 0)).collect();
    for row in found {
        if let Some(balance) = balances.get_mut(row.id.as_str()) {
            *balance = row.balance;
        }
    }
    Ok(balances)
}

/// The admission decision (L2, L3): against the org's available balance as
/// the batch's earlier operations left it.
fn decide_hold<'a>(
    a: &'a HoldArgs,
    keys: &mut HashSet<&'a str>,
    holds: &mut HashMap<&'a str, Known<'a>>,
    balances: &mut HashMap<&'a str, i64>,
    accounts: &'a OrgAccounts,
    w: &mut Writes<'a>,
) -> Result<HoldDone, LedgerError> {
    if let Some(key) = a.row.idempotency_key.as_deref()
        && !keys.insert(key)
    {
        return Ok(HoldDone::Exists);
    }
    let (available, held) = accounts.get(&a.row.org_id)?;
    let Some(have) = balances.get_mut(available) else {
        return Err(LedgerError::Inconsistent("a hold's balance was not read"));
    };
    if *have < a.row.amount {
        // Written nothing, so the key stays free for a retry.
        if let Some(key) = a.row.idempotency_key.as_deref() {
            keys.remove(key);
        }
        return Ok(HoldDone::Insufficient(*have));
    }
    *have -= a.row.amount;
    let (created, expires) = (a.stamps.0.as_str(), a.stamps.1.as_str());
    let entry = a.entry_id.as_str();
    w.entry(
        (entry, "hold", &a.row.org_id, &a.row.id, Cow::Borrowed(a.row.reference.as_str()), created),
        &[(available, true, -a.row.amount), (held, true, a.row.amount)],
    )?;
    holds.insert(
        &a.row.id,
        Known {
            org_id: &a.row.org_id,
            amount: a.row.amount,
            status: HoldStatus::Held,
            placed_here: Some(w.new_holds.len()),
        },
    );
    w.new_holds.push((
        &a.row.id,
        &a.row.org_id,
        a.row.amount,
        HoldStatus::Held.as_str(),
        &a.row.reference,
        a.row.idempotency_key.as_deref(),
        entry,
        None,
        None,
        created,
        expires,
        None,
    ));
    Ok(HoldDone::Placed)
}

/// Resolves a hold exactly once (L4): a hold this batch already resolved,
/// or that was resolved before, answers "not now".
fn decide_resolve<'a>(
    a: &'a ResolveArgs,
    holds: &mut HashMap<&'a str, Known<'a>>,
    balances: &mut HashMap<&'a str, i64>,
    accounts: &'a OrgAccounts,
    w: &mut Writes<'a>,
) -> Result<ResolveDone, LedgerError> {
    let Some(hold) = holds.get_mut(a.id.as_str()) else {
        return Ok(ResolveDone { found: false, resolved_now: false, amount: 0, charged: 0 });
    };
    if hold.status != HoldStatus::Held {
        return Ok(ResolveDone { found: true, resolved_now: false, amount: hold.amount, charged: 0 });
    }
    let amount = hold.amount;
    let asked = a.requested.map_or(0, modelroute_types::Money::units);
    // L5: never more than the hold; the rest goes back in the same entry.
    let charge = asked.min(amount);
    let overage = asked.saturating_sub(amount);
    let (available, held) = accounts.get(hold.org_id)?;
    if let Some(balance) = balances.get_mut(available) {
        *balance += amount - charge;
    }
    // A crash here (the crash test) must leave nothing: nothing is written yet.
    modelroute_types::failpoint("ledger.resolve.in_transaction");
    let memo =
        if overage > 0 { Cow::Owned(resolution_memo(a.status, overage)) } else { Cow::Borrowed(a.status.as_str()) };
    let entry = a.entry_id.as_str();
    let id = a.id.as_str();
    w.entry(
        (entry, a.status.as_str(), hold.org_id, id, memo, &a.stamp),
        &[(held, true, -amount), (Account::revenue_id_for(id), false, charge), (available, true, amount - charge)],
    )?;
    hold.status = a.status;
    let settled = (a.status == HoldStatus::Settled).then_some(charge);
    match hold.placed_here.and_then(|i| w.new_holds.get_mut(i)) {
        // Placed by this batch: its row is written resolved.
        Some(row) => {
            row.3 = a.status.as_str();
            row.7 = Some(entry);
            row.8 = settled;
            row.11 = Some(&a.stamp);
        }
        None => w.resolved.push((id, a.status.as_str(), settled, &a.stamp, entry)),
    }
    Ok(ResolveDone { found: true, resolved_now: true, amount, charged: charge })
}
