//! `/v1/orgs/…`, `/v1/projects/…`, `/v1/invitations/accept`: orgs,
//! members, invitations and projects. An org the caller does not belong to
//! (a key of another org, a user who is not a member) is a 404.

use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_identity::{Invitation, Member, Project, RestrictedBy, Restriction, Role, Scope};
use modelroute_types::{Code, ProjectId, UserId, time};
use serde::Deserialize;
use serde_json::{Value, json};

use super::accounts::membership_json;
use crate::ApiError;
use crate::auth::{Caller, Who, authenticate_for};
use crate::body::Body;
use crate::session::{SignedIn, actor};
use crate::state::State;

fn member_json(m: &Member) -> Value {
    json!({
        "object": "member",
        "user_id": m.user_id,
        "email": m.email,
        "name": m.name,
        "role": m.role,
        "joined_at": time::rfc3339(m.joined_at),
    })
}

fn invitation_json(i: &Invitation) -> Value {
    json!({
        "object": "invitation",
        "id": i.id,
        "org_id": i.org_id,
        "email": i.email,
        "role": i.role,
        "created_at": time::rfc3339(i.created_at),
        "expires_at": time::rfc3339(i.expires_at),
        "accepted_at": i.accepted_at.map(time::rfc3339),
    })
}

fn project_json(p: &Project) -> Value {
    json!({ "object": "project", "id": p.id, "org_id": p.org_id, "name": p.name, "created_at": time::rfc3339(p.created_at) })
}

/// The caller for the org the path names.
async fn in_org(req: &HttpRequest, org: &str) -> Result<Caller, ApiError> {
    authenticate_for(req, Some(org.to_owned())).await
}

/// The signed-in user behind a caller: managing members needs a person.
fn person(caller: &Caller) -> Result<&UserId, ApiError> {
    match &caller.who {
        Who::User { session, .. } => Ok(&session.user_id),
        Who::Key(_) => Err(ApiError::new(Code::PermissionDenied, "managing members needs a signed-in owner or admin")),
    }
}

/// `GET /v1/orgs`: the signed-in user's orgs with their role.
pub(crate) async fn list(state: State, signed_in: SignedIn) -> Result<HttpResponse, ApiError> {
    let orgs = state.services.identity.memberships(&signed_in.0.user_id).await?;
    Ok(super::list(&orgs, membership_json))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    name: String,
}

/// `POST /v1/orgs`: a new org with the caller as owner and a `default` project.
pub(crate) async fn create(
    state: State,
    req: HttpRequest,
    signed_in: SignedIn,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let b: NameBody = payload.json().await?;
    let user = &signed_in.0.user_id;
    let (org, _) = state.services.create_org(&b.name, Some(user), &actor(user.as_str(), &req)).await?;
    Ok(HttpResponse::Created()
        .json(json!({ "object": "organization", "id": org.id, "name": org.name, "role": Role::Owner })))
}

/// `GET /v1/orgs/{org}`.
pub(crate) async fn get(state: State, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let org = state.services.identity.org(caller.require(Scope::Read)?).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "organization",
        "id": org.id,
        "name": org.name,
        "role": caller.role(),
        "created_at": time::rfc3339(org.created_at),
    })))
}

/// `GET /v1/orgs/{org}/members`.
pub(crate) async fn members(state: State, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let members = state.services.identity.members(caller.require(Scope::Read)?).await?;
    Ok(super::list(&members, member_json))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    role: Role,
}

fn user_id(s: &str) -> Result<UserId, ApiError> {
    s.parse().map_err(|_| ApiError::new(Code::NotFound, "member not found"))
}

/// `PATCH /v1/orgs/{org}/members/{user}`: `{"role": "owner" | "admin" | "member"}`.
pub(crate) async fn set_role(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let (org, target) = path.into_inner();
    let caller = in_org(&req, &org).await?;
    let org = caller.require(Scope::Manage)?;
    person(&caller)?;
    let b: RoleBody = payload.json().await?;
    let target = user_id(&target)?;
    state.services.identity.set_role(org, caller.role(), &target, b.role, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::Ok().json(json!({ "object": "member", "user_id": target, "role": b.role })))
}

/// `DELETE /v1/orgs/{org}/members/{user}`: removes a member; anyone may
/// remove themselves (leave), except the last owner.
pub(crate) async fn remove_member(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, target) = path.into_inner();
    let caller = in_org(&req, &org).await?;
    let by = person(&caller)?.clone();
    let target = user_id(&target)?;
    if target != by {
        caller.require(Scope::Manage)?;
    }
    let org = caller.org_id.clone();
    state.services.identity.remove_member(&org, &by, caller.role(), &target, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/orgs/{org}/invitations`.
pub(crate) async fn invitations(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let list = state.services.identity.invitations(caller.require(Scope::Manage)?).await?;
    Ok(super::list(&list, invitation_json))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    email: String,
    #[serde(default = "member")]
    role: Role,
}

const fn member() -> Role {
    Role::Member
}

/// `POST /v1/orgs/{org}/invitations`: `{"email", "role"?}`; the link goes by email.
pub(crate) async fn invite(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let org = caller.require(Scope::Manage)?;
    let by = person(&caller)?;
    let b: InviteBody = payload.json().await?;
    let inv =
        state.services.identity.invite(org, by, caller.role(), &b.email, b.role, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::Created().json(invitation_json(&inv)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    token: String,
}

/// `POST /v1/invitations/accept`: `{"token"}`, as the invited (signed-in,
/// verified) user.
pub(crate) async fn accept(
    state: State,
    req: HttpRequest,
    signed_in: SignedIn,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let b: TokenBody = payload.json().await?;
    let user = &signed_in.0.user_id;
    let m = state.services.identity.accept_invitation(&b.token, user, &actor(user.as_str(), &req)).await?;
    Ok(HttpResponse::Ok().json(membership_json(&m)))
}

/// `GET /v1/orgs/{org}/projects`.
pub(crate) async fn projects(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let list = state.services.identity.projects(caller.require(Scope::Read)?).await?;
    Ok(super::list(&list, project_json))
}

/// `POST /v1/orgs/{org}/projects`: `{"name"}`.
pub(crate) async fn create_project(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let org = caller.require(Scope::Manage)?.clone();
    let b: NameBody = payload.json().await?;
    let project = state.services.create_project(&org, &b.name, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::Created().json(project_json(&project)))
}

/// `GET /v1/projects/{id}`: a project of the caller's org.
pub(crate) async fn project(state: State, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let not_found = || ApiError::new(Code::NotFound, "project not found");
    let id: ProjectId = path.parse().map_err(|_| not_found())?;
    let project = state.services.identity.project(&id).await?;
    if project.org_id != *org {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(project_json(&project)))
}

fn restriction_json(r: Option<&Restriction>) -> Value {
    json!({
        "object": "restriction",
        "restricted": r.is_some(),
        "since": r.map(|r| time::rfc3339(r.since)),
        "by": r.map(|r| r.by),
        "reason": r.and_then(|r| r.reason.as_deref()),
    })
}

/// The org's owner, signed in: restriction and export are the owner's rights.
fn owner(caller: &Caller) -> Result<(), ApiError> {
    person(caller)?;
    if caller.role() == Role::Owner {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::PermissionDenied,
            "only the organization's owner can do this (a privacy right of the org)",
        ))
    }
}

/// `GET /v1/orgs/{org}/restriction`: whether the org's processing is restricted.
pub(crate) async fn restriction(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    let org = caller.require(Scope::Read)?;
    let r = state.services.identity.restriction(org).await?;
    Ok(HttpResponse::Ok().json(restriction_json(r.as_ref())))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestrictBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `PUT /v1/orgs/{org}/restriction`: the owner restricts the org's
/// processing: data kept and exportable, every execution refused with
/// `restricted` until the owner lifts it.
pub(crate) async fn restrict(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    owner(&caller)?;
    let b: RestrictBody = payload.json_or_default().await?;
    let r = state
        .services
        .identity
        .restrict(&caller.org_id, RestrictedBy::Org, b.reason.as_deref(), &actor(&caller.who(), &req))
        .await?;
    Ok(HttpResponse::Ok().json(restriction_json(Some(&r))))
}

/// `DELETE /v1/orgs/{org}/restriction`: the owner lifts the org's own
/// restriction (not the operator's).
pub(crate) async fn lift(state: State, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    owner(&caller)?;
    state.services.identity.lift_restriction(&caller.org_id, RestrictedBy::Org, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::Ok().json(restriction_json(None)))
}

/// `POST /v1/orgs/{org}/exports`: the owner asks for an export of
/// everything the org has (docs/PRIVACY.md); a job writes it into the
/// org's files and emails the owner a signed link. 202; 409 while another
/// export of the org is being written.
pub(crate) async fn export(state: State, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = in_org(&req, &path).await?;
    owner(&caller)?;
    let user = person(&caller)?.clone();
    let job = state.services.request_export(&caller.org_id, &user, &actor(&caller.who(), &req)).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "object": "export",
        "status": "queued",
        "job_id": job,
        "delivery": "a signed link to the archive is emailed to you when it is written",
    })))
}
