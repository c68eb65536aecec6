//! Account codes and their deterministic ids: an account's id is a UUIDv5
//! of its code, so postings can name accounts without a lookup.

use modelroute_types::{AccountId, OrgId};

const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6d6f_6465_6c72_6f75_7465_6c65_6467_6572);

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

    /// Customer accounts may never go negative.
    pub(crate) const fn is_customer(&self) -> bool {
        matches!(self.kind, Kind::Available | Kind::Held)
    }

    fn make(code: String, org_id: Option<OrgId>, kind: Kind) -> Self {
        let id = AccountId::from_trusted(format!("acct_{}", uuid::Uuid::new_v5(&NAMESPACE, code.as_bytes()).simple()));
        Self { code, id, org_id, kind }
    }
}
