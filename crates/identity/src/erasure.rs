//! Erasure (the privacy policy's section 6): a user asks to be deleted;
//! their sessions end at once; for `[privacy] account_deletion_days` they
//! may sign in and cancel; then the retention sweep erases the account.
//!
//! Erasing keeps the user's row and id (what the audit log's and other
//! records point at) and removes everything that identifies a person: the
//! email becomes `<pseudonym>@erased.invalid`, the name and password go,
//! the memberships, sessions, tokens, sign-in links, failed logins, emails
//! and invitations addressed to them are deleted, and the audit log's
//! events by or about them keep their shape with the actor replaced by the
//! pseudonym (the guarded path of `retention`). Billing records are the
//! org's, not the person's: they stay, unchanged, and the ledger still
//! verifies.

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, min};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{
    email_outbox, invitations, login_failures, memberships, sessions, user_identities, user_tokens, users,
};
use modelroute_db::{db_run, db_transaction};
use modelroute_types::retention::Due;
use modelroute_types::{UserId, time};

use crate::{Actor, Identity, IdentityError, Role};

/// Where erased accounts' addresses point: a reserved domain (RFC 2606).
const ERASED_DOMAIN: &str = "erased.invalid";

impl Identity {
    /// `user` asks to be deleted: every session ends now, and the account
    /// is erased once `grace` has passed unless they cancel. Audited as
    /// `user.deletion_requested`. Answers when it will be erased.
    ///
    /// # Errors
    /// [`IdentityError::InvalidInput`] when `password` does not match (an
    /// account with a password must give it); [`IdentityError::Conflict`]
    /// when the user is the last owner of an org that has other members
    /// (they must hand it over first); a database failure.
    pub async fn request_deletion(
        &self,
        user: &UserId,
        password: Option<&str>,
        grace: chrono::Duration,
        actor: &Actor,
    ) -> Result<NaiveDateTime, IdentityError> {
        let hash: Option<String> = db_run!(self.pool(), |conn| users::table
            .find(user.as_str())
            .select(users::password_hash)
            .first(conn)
            .await)?;
        if hash.is_some() && !crate::verify_password(password.unwrap_or_default(), hash.as_deref()).await {
            return Err(IdentityError::InvalidInput {
                field: "password",
                message: "does not match your password (deleting an account asks for it)".into(),
            });
        }
        for m in self.memberships(user).await? {
            if m.role != Role::Owner {
                continue;
            }
            let members = self.members(&m.org.id).await?;
            let other_owner = members.iter().any(|x| &x.user_id != user && x.role == Role::Owner);
            if !other_owner && members.len() > 1 {
                return Err(IdentityError::Conflict(format!(
                    "you are the last owner of {} ({}), which has other members: make one of them an owner first",
                    m.org.name, m.org.id
                )));
            }
        }
        let now = time::now();
        let user_id = user.as_str().to_owned();
        db_transaction!(self.pool(), |conn| {
            diesel::update(users::table.find(&user_id))
                .set(users::deletion_requested_at.eq(Some(now)))
                .execute(conn)
                .await?;
            diesel::delete(sessions::table.filter(sessions::user_id.eq(&user_id))).execute(conn).await?;
            Ok::<_, IdentityError>(())
        })?;
        let erase_at = now + grace;
        let details = serde_json::json!({ "erase_after": time::rfc3339(erase_at) });
        self.record(None, actor, "user.deletion_requested", Some(user.as_str()), Some(details)).await?;
        Ok(erase_at)
    }

    /// `user` cancels their deletion request (within the grace period).
    /// Audited as `user.deletion_cancelled`.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] when no request is pending; a database failure.
    pub async fn cancel_deletion(&self, user: &UserId, actor: &Actor) -> Result<(), IdentityError> {
        let changed = db_run!(self.pool(), |conn| diesel::update(
            users::table
                .find(user.as_str())
                .filter(users::deletion_requested_at.is_not_null())
                .filter(users::erased_at.is_null())
        )
        .set(users::deletion_requested_at.eq(None::<NaiveDateTime>))
        .execute(conn)
        .await)?;
        if changed == 0 {
            return Err(IdentityError::NotFound("deletion request"));
        }
        self.record(None, actor, "user.deletion_cancelled", Some(user.as_str()), None).await?;
        Ok(())
    }

    /// When `user`'s pending deletion was asked for, if one is.
    ///
    /// # Errors
    /// A database failure.
    pub async fn deletion_requested_at(&self, user: &UserId) -> Result<Option<NaiveDateTime>, IdentityError> {
        Ok(db_run!(self.pool(), |conn| users::table
            .find(user.as_str())
            .filter(users::erased_at.is_null())
            .select(users::deletion_requested_at)
            .first(conn)
            .await
            .optional())?
        .flatten())
    }

    /// Deletion requests made before `cutoff`, not yet carried out.
    ///
    /// # Errors
    /// A database failure.
    pub async fn deletions_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let (due, oldest): (i64, Option<NaiveDateTime>) = db_run!(self.pool(), |conn| users::table
            .filter(users::deletion_requested_at.lt(cutoff))
            .filter(users::erased_at.is_null())
            .select((count_star(), min(users::deletion_requested_at)))
            .first(conn)
            .await)?;
        Ok(Due::new(due, oldest))
    }

    /// Erases at most `batch` accounts whose deletion was asked for before
    /// `cutoff`; answers how many.
    ///
    /// # Errors
    /// A database failure (the accounts before it are erased; the next
    /// sweep carries on).
    pub async fn erase_due(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let ids: Vec<String> = db_run!(self.pool(), |conn| users::table
            .filter(users::deletion_requested_at.lt(cutoff))
            .filter(users::erased_at.is_null())
            .select(users::id)
            .limit(limit)
            .load(conn)
            .await)?;
        for id in &ids {
            self.erase_user(&UserId::from_trusted(id.clone())).await?;
        }
        Ok(ids.len())
    }

    /// Erases `user` now (see the module's documentation). Idempotent: an
    /// erased account is left as it is.
    ///
    /// # Errors
    /// A database failure.
    pub async fn erase_user(&self, user: &UserId) -> Result<(), IdentityError> {
        let row: Option<(String, Option<NaiveDateTime>)> = db_run!(self.pool(), |conn| users::table
            .find(user.as_str())
            .select((users::email, users::erased_at))
            .first(conn)
            .await
            .optional())?;
        let Some((email, None)) = row else {
            return Ok(());
        };
        // Random, so the pseudonym links to nothing outside this row.
        let token = crate::secret::new_token()?;
        let pseudonym = format!("erased_{}", token.get(..24).unwrap_or_default());
        self.pseudonymise_audit_actor(user.as_str(), &pseudonym).await?;
        self.pseudonymise_audit_actor(&email, &pseudonym).await?;
        let (user_id, now) = (user.as_str().to_owned(), time::now());
        let erased_email = format!("{pseudonym}@{ERASED_DOMAIN}");
        db_transaction!(self.pool(), |conn| {
            diesel::delete(sessions::table.filter(sessions::user_id.eq(&user_id))).execute(conn).await?;
            diesel::delete(user_tokens::table.filter(user_tokens::user_id.eq(&user_id))).execute(conn).await?;
            diesel::delete(user_identities::table.filter(user_identities::user_id.eq(&user_id))).execute(conn).await?;
            diesel::delete(memberships::table.filter(memberships::user_id.eq(&user_id))).execute(conn).await?;
            diesel::delete(invitations::table.filter(invitations::email.eq(&email))).execute(conn).await?;
            diesel::update(invitations::table.filter(invitations::invited_by.eq(&user_id)))
                .set(invitations::invited_by.eq(&pseudonym))
                .execute(conn)
                .await?;
            diesel::delete(login_failures::table.filter(login_failures::email.eq(&email))).execute(conn).await?;
            diesel::delete(email_outbox::table.filter(email_outbox::to_address.eq(&email))).execute(conn).await?;
            diesel::update(users::table.find(&user_id))
                .set((
                    users::email.eq(&erased_email),
                    users::name.eq(""),
                    users::password_hash.eq(None::<String>),
                    users::email_verified_at.eq(None::<NaiveDateTime>),
                    users::erased_at.eq(Some(now)),
                    users::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok::<_, IdentityError>(())
        })?;
        tracing::info!(user = %user, "account erased");
        Ok(())
    }
}
