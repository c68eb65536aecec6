//! Transactional email through an outbox: every email is first a row of
//! `email_outbox` (written by the operation that causes it), then delivered
//! by [`Identity::deliver_pending_email`] over SMTP (lettre) when
//! `[identity.email] smtp_url` is set. Without SMTP (the embedded default)
//! the row stays in the outbox and a log line says so, so the flows work
//! with no mail server. Delivery claims a row before sending it, so several
//! replicas never send one email twice; failures retry with backoff.

use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use modelroute_db::db_run;
use modelroute_db::schema::email_outbox;
use modelroute_types::{EmailId, time};
use serde::Serialize;

use crate::{Identity, IdentityError};

/// Attempts before an email is given up (its `last_error` stays).
const MAX_ATTEMPTS: i32 = 8;
/// A claimed email is retried after this long if its sender vanished.
const CLAIM: Duration = Duration::minutes(5);

/// An email in the outbox.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboxEmail {
    /// Its id.
    pub id: EmailId,
    /// The recipient.
    pub to: String,
    /// What it is: `verify_email`, `password_reset`, `invitation`, …
    pub kind: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// When it was queued.
    pub created_at: NaiveDateTime,
    /// When the SMTP server accepted it, if it has.
    pub sent_at: Option<NaiveDateTime>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = email_outbox)]
struct Row {
    id: String,
    to_address: String,
    kind: String,
    subject: String,
    body: String,
    created_at: NaiveDateTime,
    attempts: i32,
    next_attempt_at: NaiveDateTime,
    sent_at: Option<NaiveDateTime>,
    last_error: Option<String>,
}

impl From<Row> for OutboxEmail {
    fn from(r: Row) -> Self {
        Self {
            id: EmailId::from_trusted(r.id),
            to: r.to_address,
            kind: r.kind,
            subject: r.subject,
            body: r.body,
            created_at: r.created_at,
            sent_at: r.sent_at,
            attempts: r.attempts,
            last_error: r.last_error,
        }
    }
}

/// The SMTP side: a transport when configured.
#[derive(Clone)]
pub(crate) struct Smtp {
    pub(crate) from: String,
    pub(crate) transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the SMTP credentials: never print it.
        f.debug_struct("Smtp").field("from", &self.from).field("configured", &self.transport.is_some()).finish()
    }
}

impl Smtp {
    /// From `[identity.email]`.
    pub(crate) fn from_config(config: &crate::EmailConfig) -> Result<Self, IdentityError> {
        let from: lettre::message::Mailbox = config
            .from
            .parse()
            .map_err(|e| IdentityError::InvalidInput { field: "identity.email.from", message: format!("{e}") })?;
        let from = from.to_string();
        let url = config.smtp_url.expose();
        let transport = if url.is_empty() {
            None
        } else {
            Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    // The URL may hold a password: the error names no part of it.
                    .map_err(|_| IdentityError::InvalidInput {
                        field: "identity.email.smtp_url",
                        message: "is not a valid smtp:// or smtps:// URL".into(),
                    })?
                    .timeout(Some(StdDuration::from_secs(20)))
                    .build(),
            )
        };
        Ok(Self { from, transport })
    }
}

impl Identity {
    /// Queues an email (delivered by [`Identity::deliver_pending_email`]).
    pub(crate) async fn queue_email(
        &self,
        to: &str,
        kind: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), IdentityError> {
        let now = time::now();
        let row = Row {
            id: EmailId::new().into_string(),
            to_address: to.to_owned(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            body: body.to_owned(),
            created_at: now,
            attempts: 0,
            next_attempt_at: now,
            sent_at: None,
            last_error: None,
        };
        db_run!(self.pool(), |conn| diesel::insert_into(email_outbox::table).values(&row).execute(conn).await)?;
        if self.smtp().transport.is_some() {
            self.mail_queued().notify_one();
        } else {
            tracing::info!(email_id = %row.id, kind, "email queued in the outbox; no SMTP server is configured ([identity.email] smtp_url): read it with `modelroute outbox --to ADDRESS`");
        }
        Ok(())
    }

    /// Emails an org's billing contacts — its owners and admins — through
    /// the outbox. Answers how many were queued.
    ///
    /// # Errors
    /// A database failure.
    pub async fn email_org_admins(
        &self,
        org: &modelroute_types::OrgId,
        kind: &str,
        subject: &str,
        body: &str,
    ) -> Result<usize, IdentityError> {
        let members = self.members(org).await?;
        let mut n = 0;
        for m in members.iter().filter(|m| m.role >= crate::Role::Admin) {
            self.queue_email(&m.email, kind, subject, body).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Emails `user`, a member of `org`, through the outbox.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] when `user` is not a member of `org`; a
    /// database failure.
    pub async fn email_member(
        &self,
        org: &modelroute_types::OrgId,
        user: &modelroute_types::UserId,
        kind: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), IdentityError> {
        let members = self.members(org).await?;
        let member = members.iter().find(|m| &m.user_id == user).ok_or(IdentityError::NotFound("member"))?;
        self.queue_email(&member.email, kind, subject, body).await
    }

    /// The outbox's emails to `to`, newest first (for operators, and for
    /// tests that follow a link).
    ///
    /// # Errors
    /// A database failure.
    pub async fn outbox(&self, to: &str) -> Result<Vec<OutboxEmail>, IdentityError> {
        let to = to.trim().to_lowercase();
        let rows: Vec<Row> = db_run!(self.pool(), |conn| email_outbox::table
            .filter(email_outbox::to_address.eq(&to))
            .order(email_outbox::id.desc())
            .select(Row::as_select())
            .load(conn)
            .await)?;
        Ok(rows.into_iter().map(OutboxEmail::from).collect())
    }

    /// Sends what is due in the outbox (at most 50) and answers how many
    /// were accepted by the SMTP server. Without SMTP it sends nothing.
    ///
    /// # Errors
    /// A database failure.
    pub async fn deliver_pending_email(&self) -> Result<usize, IdentityError> {
        let Some(transport) = self.smtp().transport.clone() else { return Ok(0) };
        let now = time::now();
        let due: Vec<Row> = db_run!(self.pool(), |conn| email_outbox::table
            .filter(email_outbox::sent_at.is_null())
            .filter(email_outbox::attempts.lt(MAX_ATTEMPTS))
            .filter(email_outbox::next_attempt_at.le(now))
            .order(email_outbox::next_attempt_at.asc())
            .limit(50)
            .select(Row::as_select())
            .load(conn)
            .await)?;
        let mut sent = 0;
        for row in due {
            // Claim it: only the replica whose update matches sends it.
            let claimed = db_run!(self.pool(), |conn| diesel::update(
                email_outbox::table.find(&row.id).filter(email_outbox::next_attempt_at.eq(row.next_attempt_at))
            )
            .set((email_outbox::next_attempt_at.eq(now + CLAIM), email_outbox::attempts.eq(row.attempts + 1)))
            .execute(conn)
            .await)?;
            if claimed != 1 {
                continue;
            }
            let outcome = match self.build_message(&row) {
                Ok(message) => transport.send(message).await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    sent += 1;
                    db_run!(self.pool(), |conn| diesel::update(email_outbox::table.find(&row.id))
                        .set((email_outbox::sent_at.eq(time::now()), email_outbox::last_error.eq(None::<String>)))
                        .execute(conn)
                        .await)?;
                    tracing::info!(email_id = %row.id, kind = %row.kind, "email sent");
                }
                Err(error) => {
                    let attempts = row.attempts + 1;
                    let backoff = Duration::seconds(30 * i64::from(attempts) * i64::from(attempts));
                    db_run!(self.pool(), |conn| diesel::update(email_outbox::table.find(&row.id))
                        .set((
                            email_outbox::next_attempt_at.eq(time::now() + backoff),
                            email_outbox::last_error.eq(Some(error.chars().take(500).collect::<String>())),
                        ))
                        .execute(conn)
                        .await)?;
                    tracing::warn!(email_id = %row.id, attempts, %error, "sending an email failed; it will be retried");
                }
            }
        }
        Ok(sent)
    }

    fn build_message(&self, row: &Row) -> Result<Message, String> {
        let to = row.to_address.parse().map_err(|e| format!("recipient: {e}"))?;
        Message::builder()
            .from(self.smtp().from.parse().map_err(|e| format!("sender: {e}"))?)
            .to(to)
            .subject(row.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(row.body.clone())
            .map_err(|e| e.to_string())
    }

    /// Whether emails are sent (an SMTP server is configured); without one
    /// they wait in the outbox.
    #[must_use]
    pub fn sends_email(&self) -> bool {
        self.smtp().transport.is_some()
    }

    /// Returns when an email is queued in this process (a delivery job
    /// should run now).
    pub async fn email_queued(&self) {
        self.mail_queued().notified().await;
    }
}
