//! Restriction of processing (the privacy policy's section 6): an org whose
//! processing is restricted keeps its data, can read and export it, and
//! runs nothing: every execution is refused with `restricted`. The org's
//! owner may restrict it and lift that; the operator may restrict it too,
//! and then only the operator lifts it (a request that came to the privacy
//! contact, or a dispute).
//!
//! The flag rides on the API key's [`crate::Principal`] (cached with the
//! key): no request pays a read for it. A change drops this process's
//! cached keys of the org at once; other replicas see it within the key
//! cache's TTL (`[identity] key_cache_ttl_secs`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::orgs;
use modelroute_types::{OrgId, time};
use serde::Serialize;

use crate::{Actor, Identity, IdentityError};

/// Who restricted an org, and so who may lift it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictedBy {
    /// The org's owner: the owner may lift it.
    Org,
    /// The operator: only the operator lifts it.
    Operator,
}

impl RestrictedBy {
    /// Its stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Org => "org",
            Self::Operator => "operator",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "org" { Self::Org } else { Self::Operator }
    }
}

/// An org's restriction, when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Restriction {
    /// Since when.
    pub since: NaiveDateTime,
    /// Who restricted it (and may lift it).
    pub by: RestrictedBy,
    /// Why, as given.
    pub reason: Option<String>,
}

/// The longest reason kept.
const MAX_REASON_CHARS: usize = 500;

impl Identity {
    /// `org`'s restriction, if it is restricted.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] for no such org; a database failure.
    pub async fn restriction(&self, org: &OrgId) -> Result<Option<Restriction>, IdentityError> {
        let row: Option<(Option<NaiveDateTime>, Option<String>, Option<String>)> =
            db_run!(self.pool(), |conn| orgs::table
                .find(org.as_str())
                .select((orgs::restricted_at, orgs::restricted_by, orgs::restricted_reason))
                .first(conn)
                .await
                .optional())?;
        let (since, by, reason) = row.ok_or(IdentityError::NotFound("organization"))?;
        Ok(since.map(|since| Restriction { since, by: RestrictedBy::parse(by.as_deref().unwrap_or_default()), reason }))
    }

    /// Restricts `org`'s processing, `by` its owner or the operator; a
    /// restriction already in place stays as it is (an operator's is not
    /// downgraded to the org's). Audited as `org.restricted`.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] for no such org; a reason over 500
    /// characters; a database failure.
    pub async fn restrict(
        &self,
        org: &OrgId,
        by: RestrictedBy,
        reason: Option<&str>,
        actor: &Actor,
    ) -> Result<Restriction, IdentityError> {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
        if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Err(IdentityError::InvalidInput {
                field: "reason",
                message: format!("at most {MAX_REASON_CHARS} characters"),
            });
        }
        let now = time::now();
        // An operator's restriction replaces the org's; nothing replaces an operator's.
        let replaces: Vec<&str> = if by == RestrictedBy::Operator { vec![RestrictedBy::Org.as_str()] } else { vec![] };
        let changed = db_run!(self.pool(), |conn| diesel::update(
            orgs::table
                .find(org.as_str())
                .filter(orgs::restricted_at.is_null().or(orgs::restricted_by.eq_any(&replaces)))
        )
        .set((orgs::restricted_at.eq(now), orgs::restricted_by.eq(by.as_str()), orgs::restricted_reason.eq(&reason)))
        .execute(conn)
        .await)?;
        let current = self.restriction(org).await?.ok_or(IdentityError::NotFound("organization"))?;
        if changed > 0 {
            self.forget_org_keys(org);
            let details = serde_json::json!({ "by": by.as_str(), "reason": reason });
            self.record(Some(org), actor, "org.restricted", Some(org.as_str()), Some(details)).await?;
        }
        Ok(current)
    }

    /// Lifts `org`'s restriction, `by` its owner (only an org's own
    /// restriction) or the operator (any). Audited as `org.restriction_lifted`.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] for no such org; [`IdentityError::Forbidden`]
    /// when the org's owner tries to lift the operator's restriction; a
    /// database failure.
    pub async fn lift_restriction(&self, org: &OrgId, by: RestrictedBy, actor: &Actor) -> Result<(), IdentityError> {
        let Some(current) = self.restriction(org).await? else {
            return Ok(());
        };
        if current.by == RestrictedBy::Operator && by == RestrictedBy::Org {
            return Err(IdentityError::Forbidden(
                "the operator restricted this organization's processing; only the operator can lift it (write to the privacy contact)",
            ));
        }
        let changed = db_run!(self.pool(), |conn| diesel::update(
            orgs::table.find(org.as_str()).filter(orgs::restricted_at.eq(current.since))
        )
        .set((
            orgs::restricted_at.eq(None::<NaiveDateTime>),
            orgs::restricted_by.eq(None::<String>),
            orgs::restricted_reason.eq(None::<String>),
        ))
        .execute(conn)
        .await)?;
        if changed > 0 {
            self.forget_org_keys(org);
            self.record(Some(org), actor, "org.restriction_lifted", Some(org.as_str()), None).await?;
        }
        Ok(())
    }

    /// Whether `org` is restricted, for a caller whose key did not say (a
    /// signed-in member).
    ///
    /// # Errors
    /// A database failure.
    pub async fn is_restricted(&self, org: &OrgId) -> Result<bool, IdentityError> {
        Ok(self.restriction(org).await?.is_some())
    }
}
