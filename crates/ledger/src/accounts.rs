//! Account codes and their deterministic ids: an account's id is a UUIDv5
//! of its code, so postings can name accounts without a lookup.

use modelroute_types::{AccountId, OrgId};

const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6d6f_6465_6c72_6f75_7465_6c65_6467_6572);

/// How many accounts revenue is spread over.
pub(crate) const REVENUE_SHARDS: u32 = 16;

/// Which revenue shard a hold's settlement goes to (FNV-1a of its id).
fn revenue_shard_of(hold_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in hold_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % REVENUE_SHARDS
}

/// The kinds of account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Available,
    Held,
    Revenue,
    Grants,
    Adjustments,
    StripeClearing,
}

impl Kind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Held => "held",
            Self::Revenue => "revenue",
            Self::Grants => "grants",
            Self::Adjustments => "adjustments",
            Self::StripeClearing => "stripe_clearing",
        }
    }
}

/// An account's code and id.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub(crate) code: String,
    pub(crate) id: AccountId,
    pub(crate) org_id: Option<OrgId>,
    pub(crate) kind: Kind,
}

impl Account {
    pub(crate) fn org(org: &OrgId, kind: Kind) -> Self {
        Self::make(format!("org:{org}:{}", kind.as_str()), Some(org.clone()), kind)
    }

    pub(crate) fn platform(kind: Kind) -> Self {
        Self::make(format!("platform:{}", kind.as_str()), None, kind)
    }

    /// The revenue account a hold's settlement is posted to: one of
    /// [`REVENUE_SHARDS`] by the hold id, so concurrent settlements do not
    /// all wait on one row. Revenue is the sum of the shards.
    pub(crate) fn revenue_for(hold_id: &str) -> Self {
        Self::revenue_shard(revenue_shard_of(hold_id))
    }

    /// The id of [`Account::revenue_for`]'s account, without computing it
    /// (each id is a SHA-1): this runs on every settlement.
    pub(crate) fn revenue_id_for(hold_id: &str) -> &'static str {
        static SHARDS: std::sync::LazyLock<Vec<AccountId>> =
            std::sync::LazyLock::new(|| (0..REVENUE_SHARDS).map(|n| Account::revenue_shard(n).id).collect());
        usize::try_from(revenue_shard_of(hold_id)).ok().and_then(|i| SHARDS.get(i)).map_or("", AccountId::as_str)
    }

    pub(crate) fn revenue_shard(n: u32) -> Self {
        Self::make(format!("platform:revenue:{n}"), None, Kind::Revenue)
    }

    /// Customer accounts may never go negative.
    pub(crate) const fn is_customer(&self) -> bool {
        matches!(self.kind, Kind::Available | Kind::Held)
    }

    fn make(code: String, org_id: Option<OrgId>, kind: Kind) -> Self {
        let id = AccountId::from_trusted(format!("acct_{}", uuid::Uuid::new_v5(&NAMESPACE, code.as_bytes()).simple()));
        Self { code, id, org_id, kind }
    }
}
