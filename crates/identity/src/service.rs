use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{api_keys, orgs, projects};
use modelroute_db::{DbPool, db_run};
use modelroute_types::{ApiKeyId, OrgId, ProjectId, time};
use serde::Serialize;

use std::sync::Arc;
use std::time::Duration;

use crate::cache::KeyCache;
use crate::mail::Smtp;
use crate::oauth::OAuthClients;
use crate::{ApiKeyToken, IdentityConfig, IdentityError, Scope, Scopes, ServerSecret};

/// `last_used_at` is written at most this often per key, so that using a key
/// does not cost a write per request.
const LAST_USED_RESOLUTION_SECS: i64 = 60;

/// An organization: the tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Org {
    /// Its id.
    pub id: OrgId,
    /// Display name.
    pub name: String,
    /// When it was created.
    pub created_at: NaiveDateTime,
}

/// A project inside an organization; API keys belong to a project.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Project {
    /// Its id.
    pub id: ProjectId,
    /// The owning organization.
    pub org_id: OrgId,
    /// Display name.
    pub name: String,
    /// When it was created.
    pub created_at: NaiveDateTime,
}

/// An API key's record. The secret is not in here: only its MAC is stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKey {
    /// The record id.
    pub id: ApiKeyId,
    /// The owning organization.
    pub org_id: OrgId,
    /// The owning project.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// The public part of the token (`mr_XXXXXXXXXXXX`), safe to show.
    pub prefix: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// When it was created.
    pub created_at: NaiveDateTime,
    /// When it stops working, if ever.
    pub expires_at: Option<NaiveDateTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<NaiveDateTime>,
    /// About when it was last used (to the minute).
    pub last_used_at: Option<NaiveDateTime>,
}

/// The authenticated caller of an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant every query of the request is scoped to.
    pub org_id: OrgId,
    /// The key's project.
    pub project_id: ProjectId,
    /// The key's record id.
    pub api_key_id: ApiKeyId,
    /// The key's scopes.
    pub scopes: Scopes,
    /// Whether the org's processing is restricted (no execution runs).
    pub restricted: bool,
}

impl Principal {
    /// Ok when the key has `scope`.
    ///
    /// # Errors
    /// [`IdentityError::MissingScope`].
    pub fn require(&self, scope: Scope) -> Result<(), IdentityError> {
        if self.scopes.contains(scope) { Ok(()) } else { Err(IdentityError::MissingScope(scope.as_str())) }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = orgs)]
struct OrgRow {
    id: String,
    name: String,
    created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = projects)]
struct ProjectRow {
    id: String,
    org_id: String,
    name: String,
    created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
struct ApiKeyRow {
    id: String,
    org_id: String,
    project_id: String,
    name: String,
    public_id: String,
    secret_hmac: String,
    scopes: String,
    created_at: NaiveDateTime,
    expires_at: Option<NaiveDateTime>,
    revoked_at: Option<NaiveDateTime>,
    last_used_at: Option<NaiveDateTime>,
    /// JSON: the earlier secrets still within their grace ([`PreviousSecret`]).
    previous_secrets: String,
}

/// An earlier secret of a rotated key and until when it keeps working.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
struct PreviousSecret {
    hmac: String,
    until: NaiveDateTime,
}

/// The earlier secrets of a stored key that are still within their grace.
fn previous_secrets(stored: &str, now: NaiveDateTime) -> Vec<PreviousSecret> {
    let all: Vec<PreviousSecret> = serde_json::from_str(stored).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a key's earlier secrets are unreadable; they no longer work");
        Vec::new()
    });
    all.into_iter().filter(|p| p.until > now).collect()
}

impl From<OrgRow> for Org {
    fn from(r: OrgRow) -> Self {
        Self { id: OrgId::from_trusted(r.id), name: r.name, created_at: r.created_at }
    }
}

impl From<ProjectRow> for Project {
    fn from(r: ProjectRow) -> Self {
        Self {
            id: ProjectId::from_trusted(r.id),
            org_id: OrgId::from_trusted(r.org_id),
            name: r.name,
            created_at: r.created_at,
        }
    }
}

impl ApiKeyRow {
    fn into_key(self) -> ApiKey {
        ApiKey {
            id: ApiKeyId::from_trusted(self.id),
            org_id: OrgId::from_trusted(self.org_id),
            project_id: ProjectId::from_trusted(self.project_id),
            name: self.name,
            prefix: format!("mr_{}", self.public_id),
            scopes: self.scopes.parse().unwrap_or_default(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        }
    }
}

pub(crate) fn valid_name(field: &'static str, name: &str) -> Result<String, IdentityError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(IdentityError::InvalidInput { field, message: "must be 1 to 200 characters".into() });
    }
    if let Some(problem) = modelroute_types::text::name_problem(name) {
        return Err(IdentityError::InvalidInput { field, message: problem.into() });
    }
    Ok(name.to_owned())
}

fn mac_input(token: &ApiKeyToken) -> String {
    format!("{}_{}", token.public_id(), token.secret())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Identity operations over a database.
#[derive(Debug, Clone)]
pub struct Identity {
    pool: DbPool,
    secret: ServerSecret,
    keys: Arc<KeyCache>,
    settings: Arc<IdentityConfig>,
    smtp: Arc<Smtp>,
    mail_queued: Arc<tokio::sync::Notify>,
    oauth: Arc<OAuthClients>,
}

/// The longest grace period of a rotated key's old secret.
const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many earlier secrets of one key may be within their grace at once.
pub const MAX_SECRETS_IN_GRACE: usize = 10;

/// How long a verified key is cached unless configured otherwise.
const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(10);

impl Identity {
    /// Identity over `pool`, MACing keys under `secret`, caching verified
    /// keys for 10 seconds.
    #[must_use]
    pub fn new(pool: DbPool, secret: ServerSecret) -> Self {
        Self {
            pool,
            secret,
            keys: Arc::new(KeyCache::new(DEFAULT_KEY_CACHE_TTL)),
            settings: Arc::new(IdentityConfig::default()),
            smtp: Arc::new(Smtp { from: crate::EmailConfig::default().from, transport: None }),
            mail_queued: Arc::new(tokio::sync::Notify::new()),
            oauth: Arc::new(OAuthClients::new(&crate::OAuthConfig::default())),
        }
    }

    /// The same, configured by `[identity]`: key cache, sessions, lock,
    /// public URL, email.
    ///
    /// # Errors
    /// An invalid `[identity.email]` section.
    pub fn with_config(self, config: &IdentityConfig) -> Result<Self, IdentityError> {
        Ok(Self {
            smtp: Arc::new(Smtp::from_config(&config.email)?),
            oauth: Arc::new(OAuthClients::new(&config.oauth)),
            settings: Arc::new(config.clone()),
            ..self.with_key_cache_ttl(Duration::from_secs(config.key_cache_ttl_secs))
        })
    }

    /// Drops this process's cached keys of `org`.
    pub(crate) fn forget_org_keys(&self, org: &OrgId) {
        self.keys.forget_org(org);
    }

    pub(crate) const fn pool(&self) -> &DbPool {
        &self.pool
    }

    pub(crate) fn settings(&self) -> &IdentityConfig {
        &self.settings
    }

    pub(crate) fn smtp(&self) -> &Smtp {
        &self.smtp
    }

    pub(crate) fn oauth(&self) -> &OAuthClients {
        &self.oauth
    }

    pub(crate) fn mail_queued(&self) -> &tokio::sync::Notify {
        &self.mail_queued
    }

    pub(crate) const fn server_secret(&self) -> &ServerSecret {
        &self.secret
    }

    /// The same, caching verified keys for `ttl` (zero: no cache).
    #[must_use]
    pub fn with_key_cache_ttl(self, ttl: Duration) -> Self {
        Self { keys: Arc::new(KeyCache::new(ttl)), ..self }
    }

    /// Creates an organization.
    ///
    /// # Errors
    /// An invalid name, or a database failure.
    pub async fn create_org(&self, name: &str) -> Result<Org, IdentityError> {
        let row = OrgRow { id: OrgId::new().into_string(), name: valid_name("name", name)?, created_at: time::now() };
        db_run!(self.pool, |conn| diesel::insert_into(orgs::table).values(&row).execute(conn).await)?;
        Ok(row.into())
    }

    /// How many organizations exist (the server bootstraps when there are none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn org_count(&self) -> Result<i64, IdentityError> {
        Ok(db_run!(self.pool, |conn| orgs::table.count().get_result(conn).await)?)
    }

    /// An organization by id.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] or a database failure.
    pub async fn org(&self, id: &OrgId) -> Result<Org, IdentityError> {
        let row: Option<OrgRow> = db_run!(self.pool, |conn| orgs::table
            .find(id.as_str())
            .select(OrgRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.map(Org::from).ok_or(IdentityError::NotFound("organization"))
    }

    /// Creates a project in an organization.
    ///
    /// # Errors
    /// An unknown org, an invalid name, or a database failure.
    pub async fn create_project(&self, org_id: &OrgId, name: &str) -> Result<Project, IdentityError> {
        let name = valid_name("name", name)?;
        self.org(org_id).await?;
        let row = ProjectRow {
            id: ProjectId::new().into_string(),
            org_id: org_id.as_str().to_owned(),
            name,
            created_at: time::now(),
        };
        db_run!(self.pool, |conn| diesel::insert_into(projects::table).values(&row).execute(conn).await)?;
        Ok(row.into())
    }

    /// A project by id.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] or a database failure.
    pub async fn project(&self, id: &ProjectId) -> Result<Project, IdentityError> {
        let row: Option<ProjectRow> = db_run!(self.pool, |conn| projects::table
            .find(id.as_str())
            .select(ProjectRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.map(Project::from).ok_or(IdentityError::NotFound("project"))
    }

    /// A project of `org` ([`IdentityError::NotFound`] for another org's).
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] or a database failure.
    pub async fn project_of(&self, org: &OrgId, id: &ProjectId) -> Result<Project, IdentityError> {
        let row: Option<ProjectRow> = db_run!(self.pool, |conn| projects::table
            .filter(projects::id.eq(id.as_str()))
            .filter(projects::org_id.eq(org.as_str()))
            .select(ProjectRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.map(Project::from).ok_or(IdentityError::NotFound("project"))
    }

    /// The API keys of `org`, newest first (records only: secrets are not stored).
    ///
    /// # Errors
    /// A database failure.
    pub async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, IdentityError> {
        let rows: Vec<ApiKeyRow> = db_run!(self.pool, |conn| api_keys::table
            .filter(api_keys::org_id.eq(org.as_str()))
            .order(api_keys::id.desc())
            .select(ApiKeyRow::as_select())
            .load(conn)
            .await)?;
        Ok(rows.into_iter().map(ApiKeyRow::into_key).collect())
    }

    /// Creates an API key in a project of `org_id`. Returns the record and
    /// the token, which exists nowhere else: show it once.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] when `org_id` has no such project; an
    /// invalid name, or a database failure.
    pub async fn create_api_key(
        &self,
        org_id: &OrgId,
        project_id: &ProjectId,
        name: &str,
        scopes: &Scopes,
        expires_at: Option<NaiveDateTime>,
    ) -> Result<(ApiKey, String), IdentityError> {
        let name = valid_name("name", name)?;
        if scopes.iter().next().is_none() {
            return Err(IdentityError::InvalidInput {
                field: "scopes",
                message: "at least one scope is needed".into(),
            });
        }
        let project = self.project_of(org_id, project_id).await?;
        let token = ApiKeyToken::generate()?;
        let row = ApiKeyRow {
            id: ApiKeyId::new().into_string(),
            org_id: project.org_id.into_string(),
            project_id: project.id.into_string(),
            name,
            public_id: token.public_id().to_owned(),
            secret_hmac: hex(self.secret.mac(mac_input(&token).as_bytes()).as_ref()),
            scopes: scopes.to_string(),
            created_at: time::now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
            previous_secrets: "[]".into(),
        };
        db_run!(self.pool, |conn| diesel::insert_into(api_keys::table).values(&row).execute(conn).await)?;
        tracing::info!(key_prefix = %format!("mr_{}", row.public_id), org_id = %row.org_id, "api key created");
        Ok((row.into_key(), token.reveal()))
    }

    /// Whether the presented token matches the current secret, or an
    /// earlier one within its grace period (constant-time compares).
    fn secret_matches(&self, token: &ApiKeyToken, tag: &[u8], previous: &[(Vec<u8>, NaiveDateTime)]) -> bool {
        let input = mac_input(token);
        if self.secret.verify(input.as_bytes(), tag) {
            return true;
        }
        let now = time::now();
        previous.iter().any(|(old, until)| *until > now && self.secret.verify(input.as_bytes(), old))
    }

    /// Verifies a presented token and returns who it belongs to.
    ///
    /// Malformed tokens fail before any database access. The stored MAC is
    /// compared in constant time. A cached key whose MAC does not match is
    /// looked up again (it may have been rotated through another replica).
    ///
    /// # Errors
    /// [`IdentityError::InvalidApiKey`] for any key that does not verify.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, IdentityError> {
        let token = ApiKeyToken::parse(token)?;
        if let Some(cached) =
            self.keys.get(token.public_id()).filter(|c| self.secret_matches(&token, &c.tag, &c.previous))
        {
            let now = time::now();
            if cached.expires_at.is_some_and(|t| t <= now) {
                return Err(IdentityError::InvalidApiKey);
            }
            if cached.last_used_at.is_none_or(|t| (now - t).num_seconds() >= LAST_USED_RESOLUTION_SECS) {
                // Off the request path: a lost write only makes `last_used_at` a minute older.
                self.keys.touched(token.public_id(), now);
                let (pool, id) = (self.pool.clone(), cached.principal.api_key_id.clone());
                tokio::spawn(async move {
                    let written: Result<usize, IdentityError> = async {
                        Ok(db_run!(pool, |conn| diesel::update(api_keys::table.find(id.as_str()))
                            .set(api_keys::last_used_at.eq(now))
                            .execute(conn)
                            .await)?)
                    }
                    .await;
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "recording a key's last use failed");
                    }
                });
            }
            return Ok(cached.principal);
        }
        let row: Option<ApiKeyRow> = db_run!(self.pool, |conn| api_keys::table
            .filter(api_keys::public_id.eq(token.public_id()))
            .select(ApiKeyRow::as_select())
            .first(conn)
            .await
            .optional())?;
        let row = row.ok_or(IdentityError::InvalidApiKey)?;
        let tag = unhex(&row.secret_hmac).ok_or(IdentityError::InvalidApiKey)?;
        let previous: Vec<(Vec<u8>, NaiveDateTime)> = previous_secrets(&row.previous_secrets, time::now())
            .into_iter()
            .filter_map(|p| Some((unhex(&p.hmac)?, p.until)))
            .collect();
        if !self.secret_matches(&token, &tag, &previous) {
            return Err(IdentityError::InvalidApiKey);
        }
        let now = time::now();
        if row.revoked_at.is_some() || row.expires_at.is_some_and(|t| t <= now) {
            return Err(IdentityError::InvalidApiKey);
        }
        let stale = row.last_used_at.is_none_or(|t| (now - t).num_seconds() >= LAST_USED_RESOLUTION_SECS);
        if stale {
            db_run!(self.pool, |conn| diesel::update(api_keys::table.find(&row.id))
                .set(api_keys::last_used_at.eq(now))
                .execute(conn)
                .await)?;
        }
        let public_id = row.public_id.clone();
        let last_used_at = if stale { Some(now) } else { row.last_used_at };
        let key = row.into_key();
        let restricted: Option<NaiveDateTime> = db_run!(self.pool, |conn| orgs::table
            .find(key.org_id.as_str())
            .select(orgs::restricted_at)
            .first(conn)
            .await)?;
        let principal = Principal {
            org_id: key.org_id,
            project_id: key.project_id,
            api_key_id: key.id,
            scopes: key.scopes,
            restricted: restricted.is_some(),
        };
        self.keys.insert(&public_id, tag, previous, principal.clone(), key.expires_at, last_used_at);
        Ok(principal)
    }

    /// Rotates a key of `org_id`: a new secret under the same key id and
    /// scopes; the old secret keeps working for `grace` (at most 7 days),
    /// on every replica (a replica whose cache holds the old MAC looks the
    /// key up again when the new secret does not match it). Secrets of
    /// earlier rotations keep their own grace: each rotation's promise
    /// stands. Returns the record, the new token (shown once) and until when
    /// the old secret works.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] for another org's key or a revoked one;
    /// a grace period over 7 days; [`IdentityError::Conflict`] when
    /// [`MAX_SECRETS_IN_GRACE`] earlier secrets are still within their grace
    /// and this rotation would add one more.
    pub async fn rotate_api_key(
        &self,
        org_id: &OrgId,
        id: &ApiKeyId,
        grace: Duration,
    ) -> Result<(ApiKey, String, NaiveDateTime), IdentityError> {
        let now = time::now();
        let until = (grace <= MAX_ROTATION_GRACE)
            .then(|| chrono::Duration::from_std(grace).ok().and_then(|g| now.checked_add_signed(g)))
            .flatten()
            .ok_or_else(|| IdentityError::InvalidInput {
                field: "grace_period_secs",
                message: "must be at most 604800 (7 days)".into(),
            })?;
        let row: Option<ApiKeyRow> = db_run!(self.pool, |conn| api_keys::table
            .filter(api_keys::id.eq(id.as_str()).and(api_keys::org_id.eq(org_id.as_str())))
            .filter(api_keys::revoked_at.is_null())
            .select(ApiKeyRow::as_select())
            .first(conn)
            .await
            .optional())?;
        let row = row.ok_or(IdentityError::NotFound("api key"))?;
        let mut previous = previous_secrets(&row.previous_secrets, now);
        if until > now {
            if previous.len() >= MAX_SECRETS_IN_GRACE {
                return Err(IdentityError::Conflict(format!(
                    "{MAX_SECRETS_IN_GRACE} earlier secrets of this key are still within their grace; \
                     rotate with grace_period_secs 0, or revoke the key"
                )));
            }
            previous.push(PreviousSecret { hmac: row.secret_hmac.clone(), until });
        }
        let previous = serde_json::to_string(&previous).map_err(|e| IdentityError::Conflict(e.to_string()))?;
        let token = ApiKeyToken::with_public_id(&row.public_id)?;
        let new_mac = hex(self.secret.mac(mac_input(&token).as_bytes()).as_ref());
        // Conditional on the MAC read above: two concurrent rotations cannot both win.
        let changed = db_run!(self.pool, |conn| diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id.as_str()))
                .filter(api_keys::org_id.eq(org_id.as_str()))
                .filter(api_keys::revoked_at.is_null())
                .filter(api_keys::secret_hmac.eq(&row.secret_hmac))
        )
        .set((api_keys::secret_hmac.eq(&new_mac), api_keys::previous_secrets.eq(&previous)))
        .execute(conn)
        .await)?;
        if changed != 1 {
            return Err(IdentityError::Conflict("the key was rotated or revoked concurrently; try again".into()));
        }
        self.keys.forget(id);
        tracing::info!(key_prefix = %format!("mr_{}", row.public_id), org_id = %row.org_id, "api key rotated");
        Ok((row.into_key(), token.reveal(), until))
    }

    /// Revokes a key of `org_id`. Revoking twice is fine. The org is part of
    /// the write itself: another org's key id changes nothing.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] when the org has no such key.
    pub async fn revoke_api_key(&self, org_id: &OrgId, id: &ApiKeyId) -> Result<(), IdentityError> {
        let now = time::now();
        let of_org =
            || api_keys::table.filter(api_keys::id.eq(id.as_str())).filter(api_keys::org_id.eq(org_id.as_str()));
        let revoked = db_run!(self.pool, |conn| diesel::update(of_org().filter(api_keys::revoked_at.is_null()))
            .set(api_keys::revoked_at.eq(now))
            .execute(conn)
            .await)?;
        if revoked == 0 {
            let exists: i64 = db_run!(self.pool, |conn| of_org().count().get_result(conn).await)?;
            if exists == 0 {
                return Err(IdentityError::NotFound("api key"));
            }
        }
        self.keys.forget(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use modelroute_db::db_test;

    use super::*;

    fn identity(db: &modelroute_db::testing::TestDb) -> Identity {
        Identity::new(db.pool().clone(), ServerSecret::from_text(&"s".repeat(32)).unwrap())
    }

    db_test!(async fn key_authenticates_until_revoked(db) {
        let id = identity(&db);
        let org = id.create_org("Acme").await.unwrap();
        let project = id.create_project(&org.id, "default").await.unwrap();
        let (key, token) = id.create_api_key(&org.id, &project.id, "ci", &Scopes::all(), None).await.unwrap();
        let p = id.authenticate(&token).await.unwrap();
        assert_eq!(p.org_id, org.id);
        assert_eq!(p.api_key_id, key.id);
        id.revoke_api_key(&org.id, &key.id).await.unwrap();
        assert!(matches!(id.authenticate(&token).await, Err(IdentityError::InvalidApiKey)));
    });

    db_test!(async fn cached_keys_still_check_the_secret_and_revocations_reach_other_replicas(db) {
        let ttl = Duration::from_millis(300);
        let here = identity(&db).with_key_cache_ttl(ttl);
        let replica = identity(&db).with_key_cache_ttl(ttl);
        let org = here.create_org("Acme").await.unwrap();
        let project = here.create_project(&org.id, "default").await.unwrap();
        let (key, token) = here.create_api_key(&org.id, &project.id, "ci", &Scopes::all(), None).await.unwrap();
        assert_eq!(here.authenticate(&token).await.unwrap().api_key_id, key.id);
        assert_eq!(replica.authenticate(&token).await.unwrap().api_key_id, key.id);
        // Same public id, another secret (checksum made valid): refused from the cache too.
        let forged = ApiKeyToken::parse(&token).unwrap().with_other_secret().reveal();
        assert!(matches!(here.authenticate(&forged).await, Err(IdentityError::InvalidApiKey)));
        // Revoked here: refused here at once; the replica's cache holds it for at most the TTL.
        here.revoke_api_key(&org.id, &key.id).await.unwrap();
        assert!(matches!(here.authenticate(&token).await, Err(IdentityError::InvalidApiKey)));
        assert!(replica.authenticate(&token).await.is_ok(), "cached on the replica");
        tokio::time::sleep(ttl).await;
        assert!(matches!(replica.authenticate(&token).await, Err(IdentityError::InvalidApiKey)));
    });

    db_test!(async fn a_rotated_key_works_on_every_replica_and_the_old_secret_only_for_its_grace(db) {
        let ttl = Duration::from_millis(300);
        let here = identity(&db).with_key_cache_ttl(ttl);
        let replica = identity(&db).with_key_cache_ttl(ttl);
        let org = here.create_org("Acme").await.unwrap();
        let other = here.create_org("Other").await.unwrap();
        let project = here.create_project(&org.id, "default").await.unwrap();
        let (key, old) = here.create_api_key(&org.id, &project.id, "ci", &Scopes::all(), None).await.unwrap();
        here.authenticate(&old).await.unwrap();
        replica.authenticate(&old).await.unwrap(); // cached there with the old MAC
        assert!(matches!(here.rotate_api_key(&other.id, &key.id, ttl).await, Err(IdentityError::NotFound(_))));
        let grace = Duration::from_millis(900);
        let (rotated, new, _) = here.rotate_api_key(&org.id, &key.id, grace).await.unwrap();
        assert_eq!((rotated.id.clone(), rotated.prefix.clone()), (key.id.clone(), key.prefix.clone()), "same key, new secret");
        assert_ne!(new, old);
        // The new secret works at once everywhere, the replica's cache notwithstanding.
        assert_eq!(here.authenticate(&new).await.unwrap().api_key_id, key.id);
        assert_eq!(replica.authenticate(&new).await.unwrap().api_key_id, key.id);
        // The old one works during the grace period...
        here.authenticate(&old).await.unwrap();
        replica.authenticate(&old).await.unwrap();
        // ...and not after it (plus the cache TTL on a replica that cached it).
        tokio::time::sleep(grace + ttl).await;
        assert!(matches!(here.authenticate(&old).await, Err(IdentityError::InvalidApiKey)));
        assert!(matches!(replica.authenticate(&old).await, Err(IdentityError::InvalidApiKey)));
        here.authenticate(&new).await.unwrap();
        assert!(here.rotate_api_key(&org.id, &key.id, Duration::from_secs(8 * 24 * 3600)).await.is_err(), "at most 7 days");
        let huge = Duration::from_secs(10_000_000_000_000);
        assert!(matches!(here.rotate_api_key(&org.id, &key.id, huge).await, Err(IdentityError::InvalidInput { .. })), "no overflow");
        here.revoke_api_key(&org.id, &key.id).await.unwrap();
        assert!(matches!(here.rotate_api_key(&org.id, &key.id, ttl).await, Err(IdentityError::NotFound(_))), "revoked stays revoked");
    });

    db_test!(async fn another_servers_secret_does_not_verify(db) {
        let id = identity(&db);
        let org = id.create_org("Acme").await.unwrap();
        let project = id.create_project(&org.id, "default").await.unwrap();
        let (_, token) = id.create_api_key(&org.id, &project.id, "ci", &Scopes::all(), None).await.unwrap();
        let other = Identity::new(db.pool().clone(), ServerSecret::from_text(&"t".repeat(32)).unwrap());
        assert!(matches!(other.authenticate(&token).await, Err(IdentityError::InvalidApiKey)));
    });

    db_test!(async fn expired_keys_and_other_orgs_are_refused(db) {
        let id = identity(&db);
        let org = id.create_org("Acme").await.unwrap();
        let other = id.create_org("Other").await.unwrap();
        let project = id.create_project(&org.id, "p").await.unwrap();
        let past = time::now() - chrono::Duration::seconds(1);
        let (key, token) = id.create_api_key(&org.id, &project.id, "old", &Scopes::all(), Some(past)).await.unwrap();
        assert!(matches!(id.authenticate(&token).await, Err(IdentityError::InvalidApiKey)));
        assert!(matches!(id.revoke_api_key(&other.id, &key.id).await, Err(IdentityError::NotFound(_))));
        assert!(matches!(id.create_project(&OrgId::new(), "x").await, Err(IdentityError::NotFound(_))));
        assert!(matches!(id.create_org("  ").await, Err(IdentityError::InvalidInput { field: "name", .. })));
    });

    db_test!(async fn another_orgs_key_id_revokes_and_rotates_nothing(db) {
        let id = identity(&db);
        let victim = id.create_org("Victim").await.unwrap();
        let attacker = id.create_org("Attacker").await.unwrap();
        let project = id.create_project(&victim.id, "prod").await.unwrap();
        let (key, token) = id.create_api_key(&victim.id, &project.id, "prod", &Scopes::all(), None).await.unwrap();
        id.authenticate(&token).await.unwrap();
        assert!(matches!(id.revoke_api_key(&attacker.id, &key.id).await, Err(IdentityError::NotFound(_))));
        assert!(matches!(
            id.rotate_api_key(&attacker.id, &key.id, Duration::ZERO).await,
            Err(IdentityError::NotFound(_))
        ));
        let fresh = identity(&db); // no cache: what the database says
        assert_eq!(fresh.authenticate(&token).await.unwrap().api_key_id, key.id, "still valid, same secret");
        let stored = fresh.list_api_keys(&victim.id).await.unwrap();
        assert_eq!(stored[0].revoked_at, None);
        // And a key in another org's project cannot be made.
        let theirs = id.create_api_key(&attacker.id, &project.id, "x", &Scopes::all(), None).await;
        assert!(matches!(theirs, Err(IdentityError::NotFound("project"))));
        assert_eq!(fresh.list_api_keys(&victim.id).await.unwrap().len(), 1);
        assert!(fresh.list_api_keys(&attacker.id).await.unwrap().is_empty());
    });

    db_test!(async fn every_rotation_keeps_its_own_grace(db) {
        let id = identity(&db).with_key_cache_ttl(Duration::ZERO);
        let org = id.create_org("Acme").await.unwrap();
        let project = id.create_project(&org.id, "default").await.unwrap();
        let (key, first) = id.create_api_key(&org.id, &project.id, "ci", &Scopes::all(), None).await.unwrap();
        let hour = Duration::from_secs(3600);
        let (_, second, _) = id.rotate_api_key(&org.id, &key.id, hour).await.unwrap();
        let (_, third, _) = id.rotate_api_key(&org.id, &key.id, Duration::from_millis(600)).await.unwrap();
        for token in [&first, &second, &third] {
            id.authenticate(token).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        // The second rotation's short grace ended; the first one's hour stands.
        id.authenticate(&first).await.unwrap();
        assert!(matches!(id.authenticate(&second).await, Err(IdentityError::InvalidApiKey)));
        id.authenticate(&third).await.unwrap();
        // A rotation without grace ends nothing that was promised before.
        let (_, fourth, _) = id.rotate_api_key(&org.id, &key.id, Duration::ZERO).await.unwrap();
        id.authenticate(&first).await.unwrap();
        assert!(matches!(id.authenticate(&third).await, Err(IdentityError::InvalidApiKey)));
        id.authenticate(&fourth).await.unwrap();
        // At most MAX_SECRETS_IN_GRACE earlier secrets at once; then a conflict, and nothing changes.
        for _ in 1..MAX_SECRETS_IN_GRACE {
            id.rotate_api_key(&org.id, &key.id, hour).await.unwrap();
        }
        let (_, latest, _) = id.rotate_api_key(&org.id, &key.id, Duration::ZERO).await.unwrap();
        assert!(matches!(id.rotate_api_key(&org.id, &key.id, hour).await, Err(IdentityError::Conflict(_))));
        id.authenticate(&latest).await.unwrap();
        id.authenticate(&first).await.unwrap();
    });
}
