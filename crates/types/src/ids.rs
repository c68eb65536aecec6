//! Typed, prefixed identifiers (`org_…`, `exec_…`), Stripe-style: a reader
//! of a log line knows what an id names, and an id of one kind can never be
//! passed where another is expected.
//!
//! The body is a UUIDv7 in lowercase hex, so ids sort by creation time.
//! They are stored as text, which both SQLite and PostgreSQL index well.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that is not a well-formed id of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{value}` is not a valid {kind} id (expected `{prefix}_` followed by 32 hex digits)")]
pub struct IdError {
    /// The kind of id that was expected.
    pub kind: &'static str,
    /// The expected prefix.
    pub prefix: &'static str,
    /// The rejected input, cut to a readable length.
    pub value: String,
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// The id as stored and sent.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a value read back from our own database without
            /// re-validating it.
            #[must_use]
            pub fn from_trusted(value: String) -> Self {
                Self(value)
            }

            /// Consumes the id, returning its text.
            #[must_use]
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_prefixed(s, $prefix, $kind).map(|()| Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn parse_prefixed(s: &str, prefix: &'static str, kind: &'static str) -> Result<(), IdError> {
    let ok = s
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|body| body.len() == 32 && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if ok { Ok(()) } else { Err(IdError { kind, prefix, value: s.chars().take(64).collect() }) }
}

define_id!(
    /// An organization: the tenant that owns projects, keys and a balance.
    OrgId, "org", "organization"
);
define_id!(
    /// A project inside an organization.
    ProjectId, "proj", "project"
);
define_id!(
    /// The internal id of an API key record (not the public key id in the token).
    ApiKeyId, "key", "api key"
);
define_id!(
    /// One execution of a model.
    ExecutionId, "exec", "execution"
);
define_id!(
    /// A ledger hold.
    HoldId, "hold", "hold"
);
define_id!(
    /// A ledger journal entry.
    EntryId, "je", "journal entry"
);
define_id!(
    /// A ledger account.
    AccountId, "acct", "ledger account"
);
define_id!(
    /// An audit event.
    AuditEventId, "aud", "audit event"
);
define_id!(
    /// A user account (a person who signs in).
    UserId, "usr", "user"
);
define_id!(
    /// A browser session (not its token, which only the cookie holds).
    SessionId, "sess", "session"
);
define_id!(
    /// An invitation to join an organization.
    InvitationId, "inv", "invitation"
);
define_id!(
    /// An email in the outbox.
    EmailId, "mail", "email"
);
define_id!(
    /// A job of the durable queue.
    JobId, "job", "job"
);
define_id!(
    /// A stored file: an upload, or an execution's output re-hosted.
    FileId, "file", "file"
);
define_id!(
    /// An org's webhook endpoint.
    WebhookEndpointId, "we", "webhook endpoint"
);
define_id!(
    /// One event's delivery to one endpoint.
    WebhookDeliveryId, "wdl", "webhook delivery"
);
define_id!(
    /// One attempt of a delivery.
    WebhookAttemptId, "wat", "webhook attempt"
);
define_id!(
    /// An event (the `webhook-id` of its deliveries).
    EventId, "msg", "event"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let id = OrgId::new();
        assert!(id.as_str().starts_with("org_"));
        assert_eq!(id.as_str().parse::<OrgId>().unwrap(), id);
        assert!(id.as_str().parse::<ProjectId>().is_err());
        assert!("org_xyz".parse::<OrgId>().is_err());
        assert!("org_0123456789abcdef0123456789ABCDEF".parse::<OrgId>().is_err());
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = ExecutionId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ExecutionId::new();
        assert!(a < b);
    }
}
