//! Group commit on SQLite through the data layer's shared writer
//! ([`modelroute_db::writer`]): holds and resolutions that arrive while
//! others are being written go into the same transaction — with whatever
//! other crates' writes (the job queue's) arrive with them — so one commit
//! and one acquisition of SQLite's write lock serve many operations. The
//! ledger's lane applies its share of a batch set-wise (`batch.rs`): a
//! fixed number of statements per batch, whatever its size. A refusal
//! writes nothing; an unexpected error rolls the batch back and its
//! operations run alone.
//!
//! Not on PostgreSQL (see the writer's module for why).

use diesel::SqliteConnection;
use modelroute_db::DbPool;
use modelroute_db::writer::{Lane, Writer};
use modelroute_types::{EntryId, HoldId, Money, time};

use crate::batch::{self, Op, Outcome};
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, ResolveDone};
use crate::{HoldStatus, LedgerError, Resolution};

/// The ledger's writes through the shared writer.
pub(crate) struct LedgerLane;

impl Lane for LedgerLane {
    type Op = Op;
    type Outcome = Outcome;
    type Error = LedgerError;

    fn apply(conn: &mut SqliteConnection, ops: &[&Op]) -> Result<Vec<Outcome>, LedgerError> {
        batch::apply(conn, ops, time::now())
    }
}

/// The ledger's way to the pool's writer.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    pool: DbPool,
}

impl GroupCommit {
    /// Group commit over `pool` (a SQLite pool), starting its writer.
    ///
    /// # Errors
    /// [`LedgerError::Stopped`] when the writer cannot be started.
    pub(crate) fn start(pool: &DbPool) -> Result<Self, LedgerError> {
        pool.writer().map_err(|_| LedgerError::Stopped)?.ok_or(LedgerError::Stopped)?;
        Ok(Self { pool: pool.clone() })
    }

    fn writer(&self) -> Result<&Writer, LedgerError> {
        self.pool.writer().map_err(|_| LedgerError::Stopped)?.ok_or(LedgerError::Stopped)
    }

    pub(crate) async fn hold(&self, args: HoldArgs) -> Result<HoldDone, LedgerError> {
        self.writer()?.submit::<LedgerLane>(Op::Hold(args)).await?.into_hold()
    }

    pub(crate) async fn resolve(&self, args: ResolveArgs) -> Result<ResolveDone, LedgerError> {
        self.writer()?.submit::<LedgerLane>(Op::Resolve(args)).await?.into_resolve()
    }
}

/// A settlement made by [`settle_within`].
#[derive(Debug, Clone)]
pub enum SettledWithin {
    /// This call settled the hold.
    Now(Resolution),
    /// This call did not (the hold was resolved before, or there is no such
    /// hold): [`crate::Ledger::settle`] answers what happened to it.
    Elsewhere,
}

/// Settles each of `settlements` (a hold and the actual cost) on `conn`:
/// inside the shared writer's transaction of another crate's lane, so that
/// what that lane writes commits with the settlements or not at all (the
/// execution record and its charge). The same steps as
/// [`crate::Ledger::settle`] through the ledger's own lane, set-wise; only
/// for a ledger whose [`crate::Ledger::settles_within_writer`] says so.
///
/// # Errors
/// A database failure, which should roll the writer's batch back.
pub fn settle_within(
    conn: &mut SqliteConnection,
    settlements: &[(HoldId, Money)],
) -> Result<Vec<SettledWithin>, LedgerError> {
    let now = time::now();
    // A negative cost is refused by `Ledger::settle`, which says so; it is not settled here.
    let ops: Vec<Op> = settlements
        .iter()
        .filter(|(_, actual)| actual.units() >= 0)
        .map(|(id, actual)| {
            Op::Resolve(ResolveArgs {
                id: id.clone(),
                requested: Some(*actual),
                status: HoldStatus::Settled,
                entry_id: EntryId::new(),
                now,
                stamp: batch::stamp(now),
            })
        })
        .collect();
    let refs: Vec<&Op> = ops.iter().collect();
    let mut outcomes = batch::apply(conn, &refs, now)?.into_iter().zip(ops);
    let mut settled = Vec::with_capacity(settlements.len());
    for (_, actual) in settlements {
        if actual.units() < 0 {
            settled.push(SettledWithin::Elsewhere);
            continue;
        }
        let Some((outcome, Op::Resolve(args))) = outcomes.next() else {
            return Err(LedgerError::Inconsistent("a settlement without its outcome"));
        };
        let done = outcome.into_resolve()?;
        settled.push(if done.found && done.resolved_now {
            SettledWithin::Now(crate::sql::resolution(
                &args.id,
                args.entry_id,
                HoldStatus::Settled,
                Some(*actual),
                done,
            ))
        } else {
            SettledWithin::Elsewhere
        });
    }
    Ok(settled)
}
