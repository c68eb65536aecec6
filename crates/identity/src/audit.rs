//! The audit log: append-only records of authentication and administrative
//! events. The database refuses updates and deletes of `audit_events`
//! (triggers on both backends); this module only appends and reads.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::audit_events;
use modelroute_types::{AuditEventId, OrgId, UserId, time};
use serde::Serialize;

use crate::{Identity, IdentityError};

/// Who did it and from where.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    /// An API key id (`key_…`), or `operator` for the CLI.
    pub who: String,
    /// The client's IP address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The request's `x-request-id` (ties the event to logs and traces).
    pub request_id: Option<String>,
}

impl Actor {
    /// The operator, acting through the CLI.
    #[must_use]
    pub fn operator() -> Self {
        Self { who: "operator".into(), ..Self::default() }
    }
}

/// One recorded event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its id (sorts by time).
    pub id: AuditEventId,
    /// The org it concerns.
    pub org_id: Option<String>,
    /// Who.
    pub actor: String,
    /// What: `org.created`, `project.created`, `api_key.created`,
    /// `api_key.revoked`, `routing.preferences_updated`, `credits.granted`, …
    pub action: String,
    /// On what (an id).
    pub target: Option<String>,
    /// From where.
    pub ip: Option<String>,
    /// With what client.
    pub user_agent: Option<String>,
    /// Under which request.
    pub request_id: Option<String>,
    /// Event-specific details, as JSON.
    pub details: Option<serde_json::Value>,
    /// When.
    pub created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_events)]
struct Row {
    id: String,
    org_id: Option<String>,
    actor: String,
    action: String,
    target: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    details: Option<String>,
    created_at: NaiveDateTime,
}

/// Whose events to list.
#[derive(Clone, Copy)]
enum Whose<'a> {
    Org(&'a str),
    User(&'a str),
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// One action only.
    pub action: Option<String>,
    /// At or after.
    pub from: Option<NaiveDateTime>,
    /// Before.
    pub to: Option<NaiveDateTime>,
    /// Events per page (1–500).
    pub limit: usize,
    /// The last id of the previous page.
    pub cursor: Option<AuditEventId>,
}

impl Identity {
    /// Appends an event.
    ///
    /// # Errors
    /// A database failure.
    pub async fn record(
        &self,
        org: Option<&OrgId>,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        details: Option<serde_json::Value>,
    ) -> Result<AuditEventId, IdentityError> {
        let id = AuditEventId::new();
        let row = Row {
            id: id.to_string(),
            org_id: org.map(|o| o.as_str().to_owned()),
            actor: actor.who.clone(),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            ip: actor.ip.clone(),
            user_agent: actor.user_agent.as_ref().map(|u| u.chars().take(300).collect()),
            request_id: actor.request_id.clone(),
            details: details.map(|d| d.to_string()),
            created_at: time::now(),
        };
        db_run!(self.pool(), |conn| diesel::insert_into(audit_events::table).values(&row).execute(conn).await)?;
        Ok(id)
    }

    /// A page of `org`'s events, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn audit_events(&self, org: &OrgId, filter: &AuditFilter) -> Result<Vec<AuditEvent>, IdentityError> {
        self.events(Whose::Org(org.as_str()), filter).await
    }

    /// A page of the events a user did, or that were done to their
    /// account's credentials (failed logins, reset requests), newest first:
    /// their own security history. Addresses (IP, user agent) appear only on
    /// the events the user did.
    ///
    /// # Errors
    /// A database failure.
    pub async fn user_audit_events(
        &self,
        user: &UserId,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, IdentityError> {
        self.events(Whose::User(user.as_str()), filter).await
    }

    async fn events(&self, whose: Whose<'_>, filter: &AuditFilter) -> Result<Vec<AuditEvent>, IdentityError> {
        let limit = i64::try_from(filter.limit.clamp(1, 500)).unwrap_or(500);
        let rows: Vec<Row> = db_run!(self.pool(), |conn| {
            let mut q = audit_events::table.select(Row::as_select()).into_boxed();
            q = match whose {
                Whose::Org(org) => q.filter(audit_events::org_id.eq(org)),
                // What they did, and what was done to their account's
                // credentials (`user.*` events naming them): not what an
                // admin did to their memberships.
                Whose::User(user) => q.filter(
                    audit_events::actor
                        .eq(user)
                        .or(audit_events::target.eq(user).and(audit_events::action.like("user.%"))),
                ),
            };
            let mut q = q.order(audit_events::id.desc()).limit(limit);
            if let Some(a) = &filter.action {
                q = q.filter(audit_events::action.eq(a.as_str()));
            }
            if let Some(from) = filter.from {
                q = q.filter(audit_events::created_at.ge(from));
            }
            if let Some(to) = filter.to {
                q = q.filter(audit_events::created_at.lt(to));
            }
            if let Some(c) = &filter.cursor {
                q = q.filter(audit_events::id.lt(c.as_str()));
            }
            q.load(conn).await
        })?;
        // A user's own history shows their own addresses, never another party's
        // (an admin's, or whoever tried their password).
        let hide_addresses = |r: &Row| matches!(whose, Whose::User(user) if r.actor != user);
        Ok(rows
            .into_iter()
            .map(|mut r| {
                if hide_addresses(&r) {
                    (r.ip, r.user_agent) = (None, None);
                }
                r
            })
            .map(|r| AuditEvent {
                id: AuditEventId::from_trusted(r.id),
                org_id: r.org_id,
                actor: r.actor,
                action: r.action,
                target: r.target,
                ip: r.ip,
                user_agent: r.user_agent,
                request_id: r.request_id,
                details: r.details.and_then(|d| serde_json::from_str(&d).ok()),
                created_at: r.created_at,
            })
            .collect())
    }
}
