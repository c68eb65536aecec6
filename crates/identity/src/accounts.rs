//! User accounts: sign-up with email and password, email verification,
//! login (with the brute-force lock), password reset and change.
//!
//! No account enumeration: sign-up, login and reset answer the same for
//! known and unknown emails. Sign-up always hashes the password; login
//! verifies against a dummy hash when there is no account; the reset
//! request does its work in the background and answers at once.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{login_failures, sessions, user_tokens, users};
use modelroute_db::{db_run, db_transaction, is_unique_violation};
use modelroute_types::{AuditEventId, OrgId, UserId, time};
use serde::Serialize;

use crate::audit::Actor;
use crate::password::{check_password_policy, hash_password, verify_password};
use crate::secret::{new_token, token_hash};
use crate::sessions::NewSession;
use crate::{Identity, IdentityError};

/// A verification link is valid this long.
const VERIFY_TOKEN_HOURS: i64 = 48;
/// A password-reset link is valid this long.
const RESET_TOKEN_MINUTES: i64 = 30;
/// The window of the brute-force lock.
const FAILURE_WINDOW: Duration = Duration::hours(1);

/// A user account.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// The email address (lower-cased).
    pub email: String,
    /// Display name.
    pub name: String,
    /// When the address was verified, if it was.
    pub email_verified_at: Option<NaiveDateTime>,
    /// When it was created.
    pub created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) password_hash: Option<String>,
    pub(crate) email_verified_at: Option<NaiveDateTime>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        Self {
            id: UserId::from_trusted(r.id),
            email: r.email,
            name: r.name,
            email_verified_at: r.email_verified_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = user_tokens)]
struct TokenRow {
    token_hash: String,
    user_id: String,
    purpose: String,
    created_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    used_at: Option<NaiveDateTime>,
}

/// What a single-use email token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenPurpose {
    Verify,
    Reset,
}

impl TokenPurpose {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

/// Normalises and checks an email address: trimmed, lower-cased, one `@`
/// with something on both sides and a dot in the domain, no spaces, at most
/// 254 characters.
///
/// # Errors
/// [`IdentityError::InvalidInput`] on `email`.
pub fn normalize_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email)
    } else {
        Err(IdentityError::InvalidInput {
            field: "email",
            message: "must be an email address like ada@example.com".into(),
        })
    }
}

/// A successful login: the new session's token (for the cookie), its CSRF
/// token, and a device cookie that exempts this browser from the lock.
#[derive(Debug)]
pub struct Login {
    /// The user.
    pub user: User,
    /// The session.
    pub session: NewSession,
    /// The device cookie's value.
    pub device: String,
}

impl Identity {
    pub(crate) async fn user_row_by_email(&self, email: &str) -> Result<Option<UserRow>, IdentityError> {
        Ok(db_run!(self.pool(), |conn| users::table
            .filter(users::email.eq(email))
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional())?)
    }

    /// A user by id.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] or a database failure.
    pub async fn user(&self, id: &UserId) -> Result<User, IdentityError> {
        let row: Option<UserRow> = db_run!(self.pool(), |conn| users::table
            .find(id.as_str())
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.map(User::from).ok_or(IdentityError::NotFound("user"))
    }

    /// Signs up: creates an unverified account and emails a verification
    /// link. An address that already has an account gets an email saying
    /// so instead; the caller's answer is the same either way.
    ///
    /// # Errors
    /// Invalid email, name or password (the policy), or a database failure.
    pub async fn sign_up(&self, email: &str, password: &str, name: &str, actor: &Actor) -> Result<(), IdentityError> {
        let email = normalize_email(email)?;
        let name = name.trim();
        if name.chars().count() > 200 {
            return Err(IdentityError::InvalidInput {
                field: "name",
                message: "must be at most 200 characters".into(),
            });
        }
        if let Some(problem) = modelroute_types::text::name_problem(name) {
            return Err(IdentityError::InvalidInput { field: "name", message: problem.into() });
        }
        check_password_policy(password, &email)?;
        // Hash first, whether or not the account exists: the same time either way.
        let hash = hash_password(password).await?;
        let now = time::now();
        let row = UserRow {
            id: UserId::new().into_string(),
            email: email.clone(),
            name: name.to_owned(),
            password_hash: Some(hash),
            email_verified_at: None,
            created_at: now,
            updated_at: now,
        };
        let inserted = db_run!(self.pool(), |conn| diesel::insert_into(users::table).values(&row).execute(conn).await);
        match inserted {
            Ok(_) => {
                self.send_verification(&UserId::from_trusted(row.id.clone()), &email).await?;
                self.record_user_event(&row.id, None, actor, "user.signed_up").await;
                Ok(())
            }
            Err(e) if is_unique_violation(&e) => {
                self.queue_email(
                    &email,
                    "signup_existing",
                    "Someone tried to sign up with your address",
                    &format!(
                        "Someone (perhaps you) tried to create a ModelRoute account with this address, \
                         which already has one.\n\nTo sign in, go to {}/login. If you forgot your password, \
                         reset it at {}/reset-password.\n",
                        self.settings().public_url,
                        self.settings().public_url
                    ),
                )
                .await?;
                Ok(())
            }
            Err(e) => Err(IdentityError::from(e)),
        }
    }

    pub(crate) async fn record_user_event(&self, user: &str, org: Option<&OrgId>, actor: &Actor, action: &str) {
        let actor = Actor { who: user.to_owned(), ..actor.clone() };
        let recorded: Result<AuditEventId, IdentityError> = self.record(org, &actor, action, Some(user), None).await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, action, "recording an audit event failed");
        }
    }

    async fn issue_token(
        &self,
        user: &UserId,
        purpose: TokenPurpose,
        valid: Duration,
    ) -> Result<String, IdentityError> {
        let token = new_token()?;
        let now = time::now();
        let row = TokenRow {
            token_hash: token_hash(&token),
            user_id: user.as_str().to_owned(),
            purpose: purpose.as_str().to_owned(),
            created_at: now,
            expires_at: now + valid,
            used_at: None,
        };
        db_run!(self.pool(), |conn| diesel::insert_into(user_tokens::table).values(&row).execute(conn).await)?;
        Ok(token)
    }

    async fn send_verification(&self, user: &UserId, email: &str) -> Result<(), IdentityError> {
        let token = self.issue_token(user, TokenPurpose::Verify, Duration::hours(VERIFY_TOKEN_HOURS)).await?;
        self.queue_email(
            email,
            "verify_email",
            "Verify your email address",
            &format!(
                "Welcome to ModelRoute.\n\nVerify your address: {}/verify-email?token={token}\n\n\
                 The link works once, for {VERIFY_TOKEN_HOURS} hours.\n",
                self.settings().public_url
            ),
        )
        .await
    }

    /// The user a live token of `purpose` belongs to, without using it.
    async fn token_user(&self, token: &str, purpose: TokenPurpose) -> Result<UserRow, IdentityError> {
        let hash = token_hash(token.trim());
        let now = time::now();
        let row: Option<UserRow> = db_run!(self.pool(), |conn| user_tokens::table
            .inner_join(users::table)
            .filter(user_tokens::token_hash.eq(&hash))
            .filter(user_tokens::purpose.eq(purpose.as_str()))
            .filter(user_tokens::used_at.is_null())
            .filter(user_tokens::expires_at.gt(now))
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.ok_or(IdentityError::InvalidToken)
    }

    /// Verifies an email address with the token from the link. The token
    /// works once.
    ///
    /// # Errors
    /// [`IdentityError::InvalidToken`] for an unknown, used or expired token.
    pub async fn verify_email(&self, token: &str, actor: &Actor) -> Result<User, IdentityError> {
        let hash = token_hash(token.trim());
        let now = time::now();
        let user_id: String = db_transaction!(self.pool(), |conn| {
            let user_id: Option<String> = diesel::update(
                user_tokens::table
                    .filter(user_tokens::token_hash.eq(&hash))
                    .filter(user_tokens::purpose.eq(TokenPurpose::Verify.as_str()))
                    .filter(user_tokens::used_at.is_null())
                    .filter(user_tokens::expires_at.gt(now)),
            )
            .set(user_tokens::used_at.eq(now))
            .returning(user_tokens::user_id)
            .get_result(conn)
            .await
            .optional()?;
            let user_id = user_id.ok_or(IdentityError::InvalidToken)?;
            diesel::update(users::table.find(&user_id).filter(users::email_verified_at.is_null()))
                .set((users::email_verified_at.eq(now), users::updated_at.eq(now)))
                .execute(conn)
                .await?;
            Ok::<_, IdentityError>(user_id)
        })?;
        self.record_user_event(&user_id, None, actor, "user.email_verified").await;
        self.user(&UserId::from_trusted(user_id)).await
    }

    /// Failed logins for `email` within the window: how many, and when the
    /// oldest of them leaves it.
    async fn recent_failures(&self, email: &str) -> Result<(i64, Option<NaiveDateTime>), IdentityError> {
        let since = time::now() - FAILURE_WINDOW;
        let (count, oldest): (i64, Option<NaiveDateTime>) = db_run!(self.pool(), |conn| login_failures::table
            .filter(login_failures::email.eq(email))
            .filter(login_failures::failed_at.gt(since))
            .select((diesel::dsl::count_star(), diesel::dsl::min(login_failures::failed_at)))
            .first(conn)
            .await)?;
        Ok((count, oldest))
    }

    async fn record_failure(&self, email: &str) -> Result<(), IdentityError> {
        let now = time::now();
        let since = now - FAILURE_WINDOW;
        let id = AuditEventId::new().into_string();
        db_run!(self.pool(), |conn| {
            diesel::delete(
                login_failures::table
                    .filter(login_failures::email.eq(email))
                    .filter(login_failures::failed_at.le(since)),
            )
            .execute(conn)
            .await?;
            diesel::insert_into(login_failures::table)
                .values((
                    login_failures::id.eq(&id),
                    login_failures::email.eq(email),
                    login_failures::failed_at.eq(now),
                ))
                .execute(conn)
                .await
        })?;
        Ok(())
    }

    async fn clear_failures(&self, email: &str) -> Result<(), IdentityError> {
        db_run!(self.pool(), |conn| diesel::delete(login_failures::table.filter(login_failures::email.eq(email)))
            .execute(conn)
            .await)?;
        Ok(())
    }

    /// Logs in with email and password and opens a session.
    ///
    /// The brute-force lock: after `max_failed_logins_per_hour` failures for
    /// an email within an hour, password logins for it are refused until the
    /// oldest failure is an hour old, except from a browser holding a device
    /// cookie from an earlier successful login of that account — so an
    /// attacker cannot lock the owner out — and a password reset lifts it.
    /// Failures are counted per email whether or not it has an account, so
    /// the lock tells nothing about which addresses exist.
    ///
    /// # Errors
    /// [`IdentityError::Unauthenticated`] (the same for an unknown email and a
    /// wrong password), [`IdentityError::LoginLocked`],
    /// [`IdentityError::EmailNotVerified`] (only after the right password).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        device: Option<&str>,
        actor: &Actor,
    ) -> Result<Login, IdentityError> {
        let bad = IdentityError::Unauthenticated("invalid email or password");
        let Ok(email) = normalize_email(email) else {
            // Spend the time of a real check on malformed input too.
            verify_password(password, None).await;
            return Err(bad);
        };
        let trusted = device.is_some_and(|d| self.device_cookie_valid(d, &email));
        if !trusted {
            let (failures, oldest) = self.recent_failures(&email).await?;
            if failures >= i64::from(self.settings().max_failed_logins_per_hour) {
                let until = oldest.map_or(FAILURE_WINDOW, |t| t + FAILURE_WINDOW - time::now());
                return Err(IdentityError::LoginLocked {
                    retry_after_secs: u64::try_from(until.num_seconds()).unwrap_or(0).max(1),
                });
            }
        }
        let row = self.user_row_by_email(&email).await?;
        let ok = verify_password(password, row.as_ref().and_then(|r| r.password_hash.as_deref())).await;
        // A failure goes on the account's own history when it exists (the answer is the same).
        let account = row.as_ref().map(|r| r.id.clone());
        let Some(row) = row.filter(|_| ok) else {
            self.record_failure(&email).await?;
            let anonymous = Actor { who: "anonymous".into(), ..actor.clone() };
            let recorded: Result<AuditEventId, IdentityError> =
                self.record(None, &anonymous, "user.login_failed", account.as_deref(), None).await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "recording a failed login failed");
            }
            return Err(bad);
        };
        let user_id = UserId::from_trusted(row.id.clone());
        if row.email_verified_at.is_none() {
            self.send_verification(&user_id, &email).await?;
            return Err(IdentityError::EmailNotVerified);
        }
        self.clear_failures(&email).await?;
        let session = self.create_session(&user_id, actor).await?;
        self.record_user_event(&row.id, None, actor, "user.login").await;
        Ok(Login { user: row.into(), session, device: self.issue_device_cookie(&email)? })
    }

    /// Starts a password reset: when the email has an account, a single-use
    /// link valid for 30 minutes is emailed. Answers at once either way (the
    /// work happens in the background), so the answer tells nothing.
    ///
    /// # Errors
    /// An invalid email address.
    pub fn request_password_reset(&self, email: &str, actor: &Actor) -> Result<(), IdentityError> {
        let email = normalize_email(email)?;
        let this = self.clone();
        let actor = actor.clone();
        tokio::spawn(async move {
            let sent: Result<(), IdentityError> = async {
                let Some(row) = this.user_row_by_email(&email).await? else { return Ok(()) };
                let user_id = UserId::from_trusted(row.id.clone());
                let token = this.issue_token(&user_id, TokenPurpose::Reset, Duration::minutes(RESET_TOKEN_MINUTES)).await?;
                this.queue_email(
                    &email,
                    "password_reset",
                    "Reset your password",
                    &format!(
                        "Someone asked to reset the password of your ModelRoute account.\n\n\
                         Choose a new one: {}/reset-password?token={token}\n\n\
                         The link works once, for {RESET_TOKEN_MINUTES} minutes. If it was not you, ignore this email.\n",
                        this.settings().public_url
                    ),
                )
                .await?;
                this.record_user_event(&row.id, None, &actor, "user.password_reset_requested").await;
                Ok(())
            }
            .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "a password reset email could not be prepared");
            }
        });
        Ok(())
    }

    /// Sets a new password with a reset token. Uses the token, ends every
    /// session of the user, lifts the brute-force lock, and (the link having
    /// proven it) marks the address verified.
    ///
    /// # Errors
    /// [`IdentityError::InvalidToken`], or the password policy.
    pub async fn reset_password(&self, token: &str, new_password: &str, actor: &Actor) -> Result<(), IdentityError> {
        let user = self.token_user(token, TokenPurpose::Reset).await?;
        check_password_policy(new_password, &user.email)?;
        let hash = hash_password(new_password).await?;
        let token_hash = token_hash(token.trim());
        let now = time::now();
        let user_id = user.id.clone();
        let verified_at = user.email_verified_at.or(Some(now));
        db_transaction!(self.pool(), |conn| {
            let used = diesel::update(
                user_tokens::table
                    .filter(user_tokens::token_hash.eq(&token_hash))
                    .filter(user_tokens::used_at.is_null())
                    .filter(user_tokens::expires_at.gt(now)),
            )
            .set(user_tokens::used_at.eq(now))
            .execute(conn)
            .await?;
            if used != 1 {
                return Err(IdentityError::InvalidToken);
            }
            // Other outstanding reset links die with this one.
            diesel::update(
                user_tokens::table
                    .filter(user_tokens::user_id.eq(&user_id))
                    .filter(user_tokens::purpose.eq(TokenPurpose::Reset.as_str()))
                    .filter(user_tokens::used_at.is_null()),
            )
            .set(user_tokens::used_at.eq(now))
            .execute(conn)
            .await?;
            diesel::update(users::table.find(&user_id))
                .set((
                    users::password_hash.eq(Some(&hash)),
                    users::email_verified_at.eq(verified_at),
                    users::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            diesel::delete(sessions::table.filter(sessions::user_id.eq(&user_id))).execute(conn).await?;
            Ok::<_, IdentityError>(())
        })?;
        self.clear_failures(&user.email).await?;
        self.record_user_event(&user.id, None, actor, "user.password_reset").await;
        Ok(())
    }

    /// Changes the password of a signed-in user who knows the current one,
    /// and ends their other sessions (`keep` stays).
    ///
    /// # Errors
    /// [`IdentityError::Unauthenticated`] for a wrong current password, or
    /// the policy.
    pub async fn change_password(
        &self,
        user: &UserId,
        keep: &modelroute_types::SessionId,
        current: &str,
        new_password: &str,
        actor: &Actor,
    ) -> Result<(), IdentityError> {
        let row: UserRow = db_run!(self.pool(), |conn| users::table
            .find(user.as_str())
            .select(UserRow::as_select())
            .first(conn)
            .await)?;
        if !verify_password(current, row.password_hash.as_deref()).await {
            return Err(IdentityError::InvalidInput {
                field: "current_password",
                message: "does not match your current password".into(),
            });
        }
        check_password_policy(new_password, &row.email)?;
        let hash = hash_password(new_password).await?;
        let now = time::now();
        db_transaction!(self.pool(), |conn| {
            diesel::update(users::table.find(user.as_str()))
                .set((users::password_hash.eq(Some(&hash)), users::updated_at.eq(now)))
                .execute(conn)
                .await?;
            diesel::delete(
                sessions::table.filter(sessions::user_id.eq(user.as_str())).filter(sessions::id.ne(keep.as_str())),
            )
            .execute(conn)
            .await?;
            Ok::<_, IdentityError>(())
        })?;
        self.record_user_event(user.as_str(), None, actor, "user.password_changed").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a b@example.com", "a@b@example.com", "ada@.com"]
        {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
