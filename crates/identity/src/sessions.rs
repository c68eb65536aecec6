//! Browser sessions, their CSRF tokens, and device cookies.
//!
//! A session is an opaque 256-bit random token (the cookie holds it; the
//! database holds its SHA-256) with an idle and an absolute expiry. Every
//! login makes a new one (no fixation). The CSRF token is an HMAC of the
//! session id under the server secret: a synchronizer token that needs no
//! storage and dies with the session. A device cookie is an HMAC of the
//! account's email and a nonce: it tells the brute-force lock that this
//! browser has logged in to that account before.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::sessions;
use modelroute_types::{SessionId, UserId, time};

use crate::audit::Actor;
use crate::secret::{new_token, random_hex, token_hash};
use crate::{Identity, IdentityError};

/// `last_seen_at` is written at most this often per session.
const TOUCH_RESOLUTION_SECS: i64 = 60;

/// A session just opened: the token exists only in this value (and the
/// cookie made from it).
#[derive(Debug)]
pub struct NewSession {
    /// The session's id.
    pub id: SessionId,
    /// The cookie value.
    pub token: String,
    /// The CSRF token to send back in `X-CSRF-Token`.
    pub csrf_token: String,
    /// When it ends at the latest.
    pub expires_at: NaiveDateTime,
}

/// A live session, found by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Whose.
    pub user_id: UserId,
    /// When it was opened.
    pub created_at: NaiveDateTime,
    /// When it ends at the latest.
    pub expires_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
struct SessionRow {
    id: String,
    token_hash: String,
    user_id: String,
    created_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    ip: Option<String>,
    user_agent: Option<String>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    pub(crate) async fn create_session(&self, user: &UserId, actor: &Actor) -> Result<NewSession, IdentityError> {
        let token = new_token()?;
        let now = time::now();
        let settings = self.settings();
        let row = SessionRow {
            id: SessionId::new().into_string(),
            token_hash: token_hash(&token),
            user_id: user.as_str().to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + Duration::hours(i64::from(settings.session_absolute_hours)),
            ip: actor.ip.clone(),
            user_agent: actor.user_agent.as_ref().map(|u| u.chars().take(300).collect()),
        };
        db_run!(self.pool(), |conn| diesel::insert_into(sessions::table).values(&row).execute(conn).await)?;
        let id = SessionId::from_trusted(row.id);
        Ok(NewSession { csrf_token: self.csrf_token(&id), id, token, expires_at: row.expires_at })
    }

    /// The live session a cookie's token names. An idle or expired session
    /// is deleted and refused.
    ///
    /// # Errors
    /// [`IdentityError::Unauthenticated`] when there is no live session.
    pub async fn session(&self, token: &str) -> Result<Session, IdentityError> {
        let none = IdentityError::Unauthenticated("not signed in, or the session has ended");
        // Tokens are 64 hex characters; anything else is not worth a query.
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(none);
        }
        let hash = token_hash(token);
        let row: Option<SessionRow> = db_run!(self.pool(), |conn| sessions::table
            .filter(sessions::token_hash.eq(&hash))
            .select(SessionRow::as_select())
            .first(conn)
            .await
            .optional())?;
        let row = row.ok_or_else(|| IdentityError::Unauthenticated("not signed in, or the session has ended"))?;
        let now = time::now();
        let idle = Duration::minutes(i64::from(self.settings().session_idle_minutes));
        if row.expires_at <= now || row.last_seen_at + idle <= now {
            db_run!(self.pool(), |conn| diesel::delete(sessions::table.find(&row.id)).execute(conn).await)?;
            return Err(none);
        }
        if (now - row.last_seen_at).num_seconds() >= TOUCH_RESOLUTION_SECS {
            db_run!(self.pool(), |conn| diesel::update(sessions::table.find(&row.id))
                .set(sessions::last_seen_at.eq(now))
                .execute(conn)
                .await)?;
        }
        Ok(Session {
            id: SessionId::from_trusted(row.id),
            user_id: UserId::from_trusted(row.user_id),
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }

    /// Ends one session (logout).
    ///
    /// # Errors
    /// A database failure.
    pub async fn end_session(&self, session: &Session, actor: &Actor) -> Result<(), IdentityError> {
        db_run!(self.pool(), |conn| diesel::delete(sessions::table.find(session.id.as_str())).execute(conn).await)?;
        self.record_user_event(session.user_id.as_str(), None, actor, "user.logout").await;
        Ok(())
    }

    /// Ends every session of the user ("log out everywhere").
    ///
    /// # Errors
    /// A database failure.
    pub async fn end_all_sessions(&self, user: &UserId, actor: &Actor) -> Result<usize, IdentityError> {
        let n =
            db_run!(self.pool(), |conn| diesel::delete(sessions::table.filter(sessions::user_id.eq(user.as_str())))
                .execute(conn)
                .await)?;
        self.record_user_event(user.as_str(), None, actor, "user.logout_everywhere").await;
        Ok(n)
    }

    /// The CSRF token of a session.
    #[must_use]
    pub fn csrf_token(&self, session: &SessionId) -> String {
        hex(self.server_secret().mac(format!("csrf\0{session}").as_bytes()).as_ref())
    }

    /// Whether `presented` is the CSRF token of `session` (constant time).
    #[must_use]
    pub fn csrf_valid(&self, session: &SessionId, presented: &str) -> bool {
        unhex(presented.trim())
            .is_some_and(|tag| self.server_secret().verify(format!("csrf\0{session}").as_bytes(), &tag))
    }

    /// A device cookie's value, `<nonce>.<mac>`.
    pub(crate) fn issue_device_cookie(&self, email: &str) -> Result<String, IdentityError> {
        let nonce = random_hex(16)?;
        let tag = self.server_secret().mac(format!("device\0{email}\0{nonce}").as_bytes());
        Ok(format!("{nonce}.{}", hex(tag.as_ref())))
    }

    pub(crate) fn device_cookie_valid(&self, cookie: &str, email: &str) -> bool {
        cookie.split_once('.').is_some_and(|(nonce, tag)| {
            unhex(tag)
                .is_some_and(|tag| self.server_secret().verify(format!("device\0{email}\0{nonce}").as_bytes(), &tag))
        })
    }
}
