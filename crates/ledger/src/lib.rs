//! The billing ledger: every org has a prepaid balance that can never be
//! overspent. A library: it knows nothing of HTTP, providers or executions.
//!
//! Double-entry: every movement is a journal entry whose postings sum to
//! zero. Per org there are two accounts, `available` and `held`; the
//! platform has `revenue` and `grants` (the source of manual credits).
//!
//! | operation | postings |
//! | --- | --- |
//! | credit `a` | grants −a, available +a |
//! | hold `h` | available −h, held +h |
//! | settle `h` for `c ≤ h` | held −h, revenue +c, available +(h−c) |
//! | release `h` | held −h, available +h |
//!
//! The overspend guard is one conditional update,
//! `balance = balance − h WHERE balance ≥ h`, inside the hold's transaction:
//! PostgreSQL's row lock and SQLite's `BEGIN IMMEDIATE` make it atomic with
//! the admission decision. A hold resolves exactly once: resolution is a
//! conditional status change `held → settled | released | expired`, and a
//! second attempt reads back the first outcome.
//!
//! `examples/prepaid.rs` uses it on its own (`cargo run -p modelroute-ledger
//! --example prepaid`).

#![deny(clippy::float_arithmetic)]

mod accounts;
mod batch;
mod config;
mod error;
mod group;
mod ops;
mod pgcall;
mod rows;
mod sql;

use std::future::Future;

use chrono::NaiveDateTime;
use modelroute_types::{EntryId, HoldId, Money, OrgId};
use serde::Serialize;

pub use config::LedgerConfig;
pub use error::LedgerError;
pub use group::{SettledWithin, settle_within};
pub use sql::{JournalLine, SqlLedger, VerifyReport};

/// The state of a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Money is reserved.
    Held,
    /// Resolved by a settlement.
    Settled,
    /// Resolved by a release (nothing charged).
    Released,
    /// Released by the sweeper after its timeout.
    Expired,
}

impl HoldStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Settled => "settled",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

impl TryFrom<&str> for HoldStatus {
    type Error = modelroute_db::DbError;

    /// The stored name back; an unknown one is an error, never `Held`.
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Ok(match s {
            "held" => Self::Held,
            "settled" => Self::Settled,
            "released" => Self::Released,
            "expired" => Self::Expired,
            other => return Err(modelroute_db::DbError::unknown("hold status", other)),
        })
    }
}

/// A reservation of an org's money for one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// Its id.
    pub id: HoldId,
    /// Whose money.
    pub org_id: OrgId,
    /// How much is reserved.
    pub amount: Money,
    /// Its state.
    pub status: HoldStatus,
    /// What it is for (e.g. an execution id).
    pub reference: String,
    /// When it was placed.
    pub created_at: NaiveDateTime,
    /// When the sweeper releases it if nothing else has.
    pub expires_at: NaiveDateTime,
    /// The amount charged, once settled.
    pub settled_amount: Option<Money>,
}

/// The outcome of resolving a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The hold.
    pub hold_id: HoldId,
    /// The journal entry that resolved it (the same on a replay).
    pub entry_id: EntryId,
    /// How it ended.
    pub status: HoldStatus,
    /// Moved to revenue.
    pub charged: Money,
    /// Returned to the available balance.
    pub released: Money,
    /// What the caller asked to charge beyond the hold; not charged, flagged.
    pub overage: Money,
}

/// An org's balance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Spendable now.
    pub available: Money,
    /// Reserved by open holds.
    pub held: Money,
}

/// A request to place a hold.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    /// Whose money.
    pub org_id: OrgId,
    /// How much (must be positive).
    pub amount: Money,
    /// What it is for.
    pub reference: String,
    /// Replaying the same key returns the first hold and posts nothing.
    pub idempotency_key: Option<String>,
    /// When the sweeper may release the hold if its owner neither resolves
    /// nor renews it ([`Ledger::renew`]): this long after it is placed.
    /// `None`: `[ledger] hold_timeout_secs`.
    pub expires_in: Option<std::time::Duration>,
}

/// Where credited money comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditSource {
    /// An operator's grant (manual-credits mode).
    Grant,
    /// A promotion.
    Promo,
    /// A card payment through Stripe (against the Stripe clearing account).
    Stripe,
}

/// The ledger's operations. [`SqlLedger`] implements them over the
/// database; the trait is the seam for other implementations (a reference
/// model in tests, a remote ledger service).
pub trait Ledger: Send + Sync {
    /// Reserves `amount` of the org's available balance, or fails with
    /// [`LedgerError::InsufficientBalance`] and changes nothing.
    fn hold(&self, request: HoldRequest) -> impl Future<Output = Result<Hold, LedgerError>> + Send;

    /// Charges `actual` (capped at the hold) and releases the rest, in one
    /// entry. Settling an already settled hold returns the first outcome.
    fn settle(&self, hold: &HoldId, actual: Money) -> impl Future<Output = Result<Resolution, LedgerError>> + Send;

    /// Whether [`settle_within`] settles this ledger's holds: the ledger
    /// keeps them in the SQLite database whose shared writer the caller's
    /// lane runs in. Another crate may then settle inside its own lane's
    /// transaction, so what it records commits with the settlement or not
    /// at all. `false` by default.
    fn settles_within_writer(&self) -> bool {
        false
    }

    /// Returns the whole hold to the available balance.
    fn release(&self, hold: &HoldId) -> impl Future<Output = Result<Resolution, LedgerError>> + Send;

    /// Adds money to an org's available balance.
    fn credit(
        &self,
        org: &OrgId,
        amount: Money,
        source: CreditSource,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = Result<EntryId, LedgerError>> + Send;

    /// An operator's correction: adds (positive) or takes (negative, never
    /// below zero) `amount` on the org's available balance against the
    /// platform's adjustments account, with a reason kept in the journal.
    fn adjust(
        &self,
        org: &OrgId,
        amount: Money,
        reason: &str,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = Result<EntryId, LedgerError>> + Send;

    /// The org's balance.
    fn balance(&self, org: &OrgId) -> impl Future<Output = Result<Balance, LedgerError>> + Send;

    /// A hold by id, with its state.
    fn get_hold(&self, id: &HoldId) -> impl Future<Output = Result<Hold, LedgerError>> + Send;

    /// Moves the expiry of each of `holds` that is still held to `until`
    /// (never earlier than it was): their owner is alive and still working.
    /// Answers how many were renewed; a resolved or unknown hold is skipped.
    fn renew(&self, holds: &[HoldId], until: NaiveDateTime) -> impl Future<Output = Result<usize, LedgerError>> + Send;
}
