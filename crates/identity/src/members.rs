//! Memberships: which users belong to which orgs with which role, and
//! invitations by email. A user may belong to several orgs.
//!
//! Roles: `owner` (everything, including other owners and deleting the org),
//! `admin` (members, invitations, keys, settings; not owners), `member`
//! (reads the org's data). An org always keeps at least one owner.
//! Asking about an org the user is not a member of is a "not found", so
//! org ids do not leak.

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{invitations, memberships, orgs, projects, users};
use modelroute_db::{db_run, db_transaction};
use modelroute_types::{InvitationId, OrgId, ProjectId, UserId, time};
use serde::{Deserialize, Serialize};

use crate::accounts::normalize_email;
use crate::audit::Actor;
use crate::secret::{new_token, token_hash};
use crate::{Identity, IdentityError, Org, Project, Scope, Scopes};

/// An invitation is valid this long.
const INVITATION_DAYS: i64 = 7;

/// A member's role in an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the org's data.
    Member,
    /// Manages members (not owners), invitations, keys and settings.
    Admin,
    /// Everything.
    Owner,
}

impl Role {
    /// The stored and wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// What a signed-in member may do through the API-key-shaped endpoints.
    /// Executions need an API key, so no role grants `execute` to a session.
    #[must_use]
    pub fn scopes(self) -> Scopes {
        let granted: &[Scope] = match self {
            Self::Member => &[Scope::Read],
            Self::Admin | Self::Owner => &[Scope::Read, Scope::Manage],
        };
        granted.iter().copied().collect()
    }
}

impl TryFrom<&str> for Role {
    type Error = modelroute_db::DbError;

    /// The stored name back; an unknown one is an error, never `Member`.
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Ok(match s {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            "member" => Self::Member,
            other => return Err(modelroute_db::DbError::unknown("role", other)),
        })
    }
}

/// An org as seen by one of its members.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Membership {
    /// The org.
    pub org: Org,
    /// The member's role in it.
    pub role: Role,
}

/// A member of an org.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Their email.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// Since when.
    pub joined_at: NaiveDateTime,
}

/// An invitation (its token is only in the email).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Invitation {
    /// Its id.
    pub id: InvitationId,
    /// The org.
    pub org_id: OrgId,
    /// Who is invited.
    pub email: String,
    /// With which role.
    pub role: Role,
    /// When it was sent.
    pub created_at: NaiveDateTime,
    /// When it stops working.
    pub expires_at: NaiveDateTime,
    /// When it was accepted, if it was.
    pub accepted_at: Option<NaiveDateTime>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = invitations)]
struct InvitationRow {
    id: String,
    org_id: String,
    email: String,
    role: String,
    token_hash: String,
    invited_by: String,
    created_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    accepted_at: Option<NaiveDateTime>,
    revoked_at: Option<NaiveDateTime>,
}

impl TryFrom<InvitationRow> for Invitation {
    type Error = IdentityError;

    fn try_from(r: InvitationRow) -> Result<Self, IdentityError> {
        Ok(Self {
            id: InvitationId::from_trusted(r.id),
            org_id: OrgId::from_trusted(r.org_id),
            email: r.email,
            role: Role::try_from(r.role.as_str())?,
            created_at: r.created_at,
            expires_at: r.expires_at,
            accepted_at: r.accepted_at,
        })
    }
}

impl Identity {
    /// Creates an org, with `owner` (when given) as its owner, and its
    /// `default` project, all in one transaction: an org without its owner
    /// or project is never left behind. Records no audit event; the
    /// composition root's use case (`modelroute_app::Services::create_org`)
    /// opens the org's ledger accounts and records `org.created`.
    ///
    /// # Errors
    /// An invalid name, or a database failure.
    pub async fn create_org_for(&self, owner: Option<&UserId>, name: &str) -> Result<(Org, Project), IdentityError> {
        let name = crate::service::valid_name("name", name)?;
        let now = time::now();
        let org = Org { id: OrgId::new(), name, created_at: now };
        let project = Project { id: ProjectId::new(), org_id: org.id.clone(), name: "default".into(), created_at: now };
        let (org_id, owner) = (org.id.as_str().to_owned(), owner.map(|u| u.as_str().to_owned()));
        db_transaction!(self.pool(), |conn| {
            diesel::insert_into(orgs::table)
                .values((orgs::id.eq(&org_id), orgs::name.eq(&org.name), orgs::created_at.eq(now)))
                .execute(conn)
                .await?;
            if let Some(user_id) = &owner {
                diesel::insert_into(memberships::table)
                    .values((
                        memberships::org_id.eq(&org_id),
                        memberships::user_id.eq(user_id),
                        memberships::role.eq(Role::Owner.as_str()),
                        memberships::created_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
            }
            diesel::insert_into(projects::table)
                .values((
                    projects::id.eq(project.id.as_str()),
                    projects::org_id.eq(&org_id),
                    projects::name.eq(&project.name),
                    projects::created_at.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok::<_, IdentityError>(())
        })?;
        Ok((org, project))
    }

    /// The orgs `user` belongs to, oldest membership first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityError> {
        let rows: Vec<(String, String, NaiveDateTime, String)> = db_run!(self.pool(), |conn| memberships::table
            .inner_join(orgs::table)
            .filter(memberships::user_id.eq(user.as_str()))
            .order(memberships::created_at.asc())
            .select((orgs::id, orgs::name, orgs::created_at, memberships::role))
            .load(conn)
            .await)?;
        rows.into_iter()
            .map(|(id, name, created_at, role)| {
                Ok(Membership {
                    org: Org { id: OrgId::from_trusted(id), name, created_at },
                    role: Role::try_from(role.as_str())?,
                })
            })
            .collect()
    }

    /// `user`'s role in `org`.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] (`organization`) when they are not a member.
    pub async fn role_in(&self, user: &UserId, org: &OrgId) -> Result<Role, IdentityError> {
        let role: Option<String> = db_run!(self.pool(), |conn| memberships::table
            .find((org.as_str(), user.as_str()))
            .select(memberships::role)
            .first(conn)
            .await
            .optional())?;
        Ok(Role::try_from(role.ok_or(IdentityError::NotFound("organization"))?.as_str())?)
    }

    /// The members of `org`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn members(&self, org: &OrgId) -> Result<Vec<Member>, IdentityError> {
        let rows: Vec<(String, String, String, String, NaiveDateTime)> =
            db_run!(self.pool(), |conn| memberships::table
                .inner_join(users::table)
                .filter(memberships::org_id.eq(org.as_str()))
                .order(memberships::created_at.asc())
                .select((users::id, users::email, users::name, memberships::role, memberships::created_at))
                .load(conn)
                .await)?;
        rows.into_iter()
            .map(|(id, email, name, role, joined_at)| {
                Ok(Member {
                    user_id: UserId::from_trusted(id),
                    email,
                    name,
                    role: Role::try_from(role.as_str())?,
                    joined_at,
                })
            })
            .collect()
    }

    /// The projects of `org`, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn projects(&self, org: &OrgId) -> Result<Vec<Project>, IdentityError> {
        let rows: Vec<(String, String, NaiveDateTime)> = db_run!(self.pool(), |conn| projects::table
            .filter(projects::org_id.eq(org.as_str()))
            .order(projects::created_at.asc())
            .select((projects::id, projects::name, projects::created_at))
            .load(conn)
            .await)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, created_at)| Project {
                id: ProjectId::from_trusted(id),
                org_id: org.clone(),
                name,
                created_at,
            })
            .collect())
    }

    /// Changes a member's role. Admins manage members and admins; only
    /// owners grant or take away `owner`; the last owner stays an owner.
    ///
    /// # Errors
    /// [`IdentityError::Forbidden`], [`IdentityError::NotFound`] (`member`),
    /// [`IdentityError::Conflict`] for the last owner.
    pub async fn set_role(
        &self,
        org: &OrgId,
        by: Role,
        target: &UserId,
        role: Role,
        actor: &Actor,
    ) -> Result<(), IdentityError> {
        if by < Role::Admin {
            return Err(IdentityError::Forbidden("only owners and admins can change roles"));
        }
        let current = self.role_in(target, org).await.map_err(|_| IdentityError::NotFound("member"))?;
        if (current == Role::Owner || role == Role::Owner) && by != Role::Owner {
            return Err(IdentityError::Forbidden("only owners can grant or take away the owner role"));
        }
        self.change_membership(org, target, Some(role)).await?;
        if let Err(e) = self
            .record(
                Some(org),
                actor,
                "member.role_changed",
                Some(target.as_str()),
                Some(serde_json::json!({ "from": current.as_str(), "to": role.as_str() })),
            )
            .await
        {
            tracing::warn!(error = %e, "recording an audit event failed");
        }
        Ok(())
    }

    /// Removes a member (or, when `target` is the caller, leaves the org).
    ///
    /// # Errors
    /// As [`Identity::set_role`].
    pub async fn remove_member(
        &self,
        org: &OrgId,
        by_user: &UserId,
        by: Role,
        target: &UserId,
        actor: &Actor,
    ) -> Result<(), IdentityError> {
        let current = self.role_in(target, org).await.map_err(|_| IdentityError::NotFound("member"))?;
        if target != by_user {
            if by < Role::Admin {
                return Err(IdentityError::Forbidden("only owners and admins can remove members"));
            }
            if current == Role::Owner && by != Role::Owner {
                return Err(IdentityError::Forbidden("only owners can remove an owner"));
            }
        }
        self.change_membership(org, target, None).await?;
        if let Err(e) = self.record(Some(org), actor, "member.removed", Some(target.as_str()), None).await {
            tracing::warn!(error = %e, "recording an audit event failed");
        }
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) a membership in one transaction that
    /// re-counts the owners, so two concurrent demotions cannot leave none.
    async fn change_membership(&self, org: &OrgId, target: &UserId, to: Option<Role>) -> Result<(), IdentityError> {
        let (org_s, target_s) = (org.as_str().to_owned(), target.as_str().to_owned());
        db_transaction!(self.pool(), |conn| {
            // Serialises membership changes of this org (a row lock on
            // PostgreSQL; SQLite's immediate transaction already holds the write lock).
            diesel::update(orgs::table.find(&org_s)).set(orgs::name.eq(orgs::name)).execute(conn).await?;
            if to != Some(Role::Owner) {
                let other_owners: i64 = memberships::table
                    .filter(memberships::org_id.eq(&org_s))
                    .filter(memberships::role.eq(Role::Owner.as_str()))
                    .filter(memberships::user_id.ne(&target_s))
                    .count()
                    .get_result(conn)
                    .await?;
                if other_owners == 0 {
                    return Err(IdentityError::Conflict("an organization must keep at least one owner".into()));
                }
            }
            let n = match to {
                Some(role) => {
                    diesel::update(memberships::table.find((&org_s, &target_s)))
                        .set(memberships::role.eq(role.as_str()))
                        .execute(conn)
                        .await?
                }
                None => diesel::delete(memberships::table.find((&org_s, &target_s))).execute(conn).await?,
            };
            if n == 0 {
                return Err(IdentityError::NotFound("member"));
            }
            Ok::<_, IdentityError>(())
        })
    }

    /// Invites `email` to `org` with `role`; the link is emailed and valid
    /// for 7 days. Admins may invite members and admins, owners anyone.
    ///
    /// # Errors
    /// [`IdentityError::Forbidden`], an invalid email, or a database failure.
    pub async fn invite(
        &self,
        org: &OrgId,
        by_user: &UserId,
        by: Role,
        email: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<Invitation, IdentityError> {
        if by < Role::Admin {
            return Err(IdentityError::Forbidden("only owners and admins can invite"));
        }
        if role == Role::Owner && by != Role::Owner {
            return Err(IdentityError::Forbidden("only owners can invite an owner"));
        }
        let email = normalize_email(email)?;
        let org_row = self.org(org).await?;
        let token = new_token()?;
        let now = time::now();
        let row = InvitationRow {
            id: InvitationId::new().into_string(),
            org_id: org.as_str().to_owned(),
            email: email.clone(),
            role: role.as_str().to_owned(),
            token_hash: token_hash(&token),
            invited_by: by_user.as_str().to_owned(),
            created_at: now,
            expires_at: now + Duration::days(INVITATION_DAYS),
            accepted_at: None,
            revoked_at: None,
        };
        db_run!(self.pool(), |conn| diesel::insert_into(invitations::table).values(&row).execute(conn).await)?;
        self.queue_email(
            &email,
            "invitation",
            &format!("You are invited to {} on ModelRoute", org_row.name),
            &format!(
                "You have been invited to join {} on ModelRoute as {}.\n\n\
                 Accept: {}/invitations/accept?token={token}\n\n\
                 Sign in (or sign up) with this address first. The link works once, for {INVITATION_DAYS} days.\n",
                org_row.name,
                role.as_str(),
                self.settings().public_url
            ),
        )
        .await?;
        if let Err(e) = self
            .record(
                Some(org),
                actor,
                "member.invited",
                Some(&row.id),
                Some(serde_json::json!({ "role": role.as_str() })),
            )
            .await
        {
            tracing::warn!(error = %e, "recording an audit event failed");
        }
        row.try_into()
    }

    /// The open and accepted invitations of `org`, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn invitations(&self, org: &OrgId) -> Result<Vec<Invitation>, IdentityError> {
        let rows: Vec<InvitationRow> = db_run!(self.pool(), |conn| invitations::table
            .filter(invitations::org_id.eq(org.as_str()))
            .filter(invitations::revoked_at.is_null())
            .order(invitations::created_at.desc())
            .select(InvitationRow::as_select())
            .load(conn)
            .await)?;
        rows.into_iter().map(Invitation::try_from).collect()
    }

    /// Accepts an invitation as `user`, whose verified email must be the
    /// invited one. Already a member: the role is left as it is.
    ///
    /// # Errors
    /// [`IdentityError::InvalidToken`] for an unknown, used, revoked or
    /// expired invitation or another user's.
    pub async fn accept_invitation(
        &self,
        token: &str,
        user: &UserId,
        actor: &Actor,
    ) -> Result<Membership, IdentityError> {
        let account = self.user(user).await?;
        if account.email_verified_at.is_none() {
            return Err(IdentityError::EmailNotVerified);
        }
        let hash = token_hash(token.trim());
        let now = time::now();
        let user_s = user.as_str().to_owned();
        let (org_id, role): (String, String) = db_transaction!(self.pool(), |conn| {
            let found: Option<(String, String)> = diesel::update(
                invitations::table
                    .filter(invitations::token_hash.eq(&hash))
                    .filter(invitations::email.eq(&account.email))
                    .filter(invitations::accepted_at.is_null())
                    .filter(invitations::revoked_at.is_null())
                    .filter(invitations::expires_at.gt(now)),
            )
            .set(invitations::accepted_at.eq(now))
            .returning((invitations::org_id, invitations::role))
            .get_result(conn)
            .await
            .optional()?;
            let (org_id, role) = found.ok_or(IdentityError::InvalidToken)?;
            let existing: i64 = memberships::table.find((&org_id, &user_s)).count().get_result(conn).await?;
            if existing == 0 {
                diesel::insert_into(memberships::table)
                    .values((
                        memberships::org_id.eq(&org_id),
                        memberships::user_id.eq(&user_s),
                        memberships::role.eq(&role),
                        memberships::created_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
            }
            Ok::<_, IdentityError>((org_id, role))
        })?;
        let org_id = OrgId::from_trusted(org_id);
        let actor = Actor { who: user.to_string(), ..actor.clone() };
        if let Err(e) = self.record(Some(&org_id), &actor, "member.joined", Some(user.as_str()), None).await {
            tracing::warn!(error = %e, "recording an audit event failed");
        }
        let org = self.org(&org_id).await?;
        Ok(Membership { org, role: Role::try_from(role.as_str())? })
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn a_stored_role_reads_back_and_an_unknown_one_is_an_error() {
        for r in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::try_from(r.as_str()).ok(), Some(r));
        }
        // Never quietly `member`: a role this server does not know grants nothing.
        let err = Role::try_from("superuser").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown stored role `superuser`"));
    }
}
