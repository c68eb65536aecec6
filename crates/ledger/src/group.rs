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
use modelroute_types::time;

use crate::LedgerError;
use crate::batch::{self, Op, Outcome};
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, ResolveDone};

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
