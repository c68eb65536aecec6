//! Accounts, sessions, the brute-force lock, memberships and invitations,
//! on SQLite and PostgreSQL, through the library (no HTTP).

use std::time::Duration;

use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_identity::{Actor, Identity, IdentityConfig, IdentityError, Role, ServerSecret};

const PASSWORD: &str = "correct horse battery staple";

fn identity_with(db: &TestDb, edit: impl FnOnce(&mut IdentityConfig)) -> Identity {
    let mut config = IdentityConfig::default();
    edit(&mut config);
    Identity::new(db.pool().clone(), ServerSecret::from_text(&"s".repeat(32)).unwrap()).with_config(&config).unwrap()
}

fn identity(db: &TestDb) -> Identity {
    identity_with(db, |_| {})
}

fn actor() -> Actor {
    Actor { who: "anonymous".into(), ip: Some("203.0.113.9".into()), user_agent: Some("test".into()), request_id: None }
}

/// The token of the newest email of `kind` to `to` (waits for background sends).
async fn token_from_email(id: &Identity, to: &str, kind: &str) -> String {
    for _ in 0..100 {
        if let Some(mail) = id.outbox(to).await.unwrap().into_iter().find(|m| m.kind == kind) {
            let at = mail.body.find("token=").expect("a link with a token") + "token=".len();
            return mail.body[at..at + 64].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {kind} email to {to}");
}

/// Signs up and verifies `email`.
async fn verified_user(id: &Identity, email: &str) -> modelroute_identity::User {
    id.sign_up(email, PASSWORD, "Ada", &actor()).await.unwrap();
    let token = token_from_email(id, email, "verify_email").await;
    id.verify_email(&token, &actor()).await.unwrap()
}

db_test!(async fn sign_up_verify_login_with_single_use_tokens(db) {
    let id = identity(&db);
    id.sign_up(" Ada@Example.com ", PASSWORD, "Ada", &actor()).await.unwrap();
    // Unverified: the right password is told to verify first (a new link goes out).
    assert!(matches!(id.login("ada@example.com", PASSWORD, None, &actor()).await, Err(IdentityError::EmailNotVerified)));
    let token = token_from_email(&id, "ada@example.com", "verify_email").await;
    let user = id.verify_email(&token, &actor()).await.unwrap();
    assert_eq!(user.email, "ada@example.com");
    assert!(user.email_verified_at.is_some());
    assert!(matches!(id.verify_email(&token, &actor()).await, Err(IdentityError::InvalidToken)), "single use");
    assert!(matches!(id.verify_email(&"0".repeat(64), &actor()).await, Err(IdentityError::InvalidToken)));

    let login = id.login("ADA@example.com", PASSWORD, None, &actor()).await.unwrap();
    assert_eq!(login.session.token.len(), 64, "256 random bits");
    let session = id.session(&login.session.token).await.unwrap();
    assert_eq!(session.user_id, user.id);
    assert!(id.csrf_valid(&session.id, &login.session.csrf_token));
    assert!(!id.csrf_valid(&session.id, &"ab".repeat(32)));
    // A second login is a second session with another id and token (no fixation).
    let again = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    assert_ne!(again.session.id, login.session.id);
    assert_ne!(again.session.token, login.session.token);
    assert!(!id.csrf_valid(&again.session.id, &login.session.csrf_token), "CSRF tokens are per session");
    // The store holds hashes only: the token is nowhere in the table.
    id.end_session(&session, &actor()).await.unwrap();
    assert!(id.session(&login.session.token).await.is_err());
    assert!(id.session(&again.session.token).await.is_ok());
});

db_test!(async fn answers_do_not_tell_which_emails_have_accounts(db) {
    let id = identity(&db);
    verified_user(&id, "ada@example.com").await;
    // Sign-up with a taken address: the same Ok; the owner gets a notice instead.
    id.sign_up("ada@example.com", "another good passphrase", "Eve", &actor()).await.unwrap();
    assert_eq!(token_from_email_kind(&id, "ada@example.com", "signup_existing").await, 1);
    // Login: the same error for an unknown email and a wrong password.
    let unknown = id.login("nobody@example.com", PASSWORD, None, &actor()).await.unwrap_err().to_string();
    let wrong = id.login("ada@example.com", "wrong password!!", None, &actor()).await.unwrap_err().to_string();
    assert_eq!(unknown, wrong);
    assert_eq!(unknown, "invalid email or password");
    // Reset: Ok for both, an email only for the account.
    id.request_password_reset("nobody@example.com", &actor()).unwrap();
    id.request_password_reset("ada@example.com", &actor()).unwrap();
    token_from_email(&id, "ada@example.com", "password_reset").await;
    assert!(id.outbox("nobody@example.com").await.unwrap().is_empty());
});

async fn token_from_email_kind(id: &Identity, to: &str, kind: &str) -> usize {
    id.outbox(to).await.unwrap().iter().filter(|m| m.kind == kind).count()
}

db_test!(async fn reset_sets_the_password_once_and_ends_every_session(db) {
    let id = identity(&db);
    verified_user(&id, "ada@example.com").await;
    let login = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    id.request_password_reset("ada@example.com", &actor()).unwrap();
    let token = token_from_email(&id, "ada@example.com", "password_reset").await;
    // A refused password does not use the token up.
    let weak = id.reset_password(&token, "password1", &actor()).await.unwrap_err();
    assert!(matches!(weak, IdentityError::InvalidInput { field: "password", .. }), "{weak}");
    id.reset_password(&token, "a brand new passphrase", &actor()).await.unwrap();
    assert!(id.session(&login.session.token).await.is_err(), "sessions end at a reset");
    assert!(matches!(id.reset_password(&token, "yet another passphrase", &actor()).await, Err(IdentityError::InvalidToken)));
    assert!(id.login("ada@example.com", PASSWORD, None, &actor()).await.is_err());
    id.login("ada@example.com", "a brand new passphrase", None, &actor()).await.unwrap();
});

db_test!(async fn a_password_change_keeps_this_session_and_ends_the_others(db) {
    let id = identity(&db);
    let user = verified_user(&id, "ada@example.com").await;
    let here = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    let elsewhere = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    let wrong = id.change_password(&user.id, &here.session.id, "not it at all", "a brand new passphrase", &actor()).await;
    assert!(matches!(wrong, Err(IdentityError::InvalidInput { field: "current_password", .. })));
    id.change_password(&user.id, &here.session.id, PASSWORD, "a brand new passphrase", &actor()).await.unwrap();
    assert!(id.session(&here.session.token).await.is_ok());
    assert!(id.session(&elsewhere.session.token).await.is_err());
    let other = id.end_all_sessions(&user.id, &actor()).await.unwrap();
    assert_eq!(other, 1);
    assert!(id.session(&here.session.token).await.is_err());
});

db_test!(async fn the_lock_stops_guessing_but_not_the_owner(db) {
    let id = identity_with(&db, |c| c.max_failed_logins_per_hour = 3);
    verified_user(&id, "ada@example.com").await;
    // The owner logged in from this browser before: it holds a device cookie.
    let device = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap().device;
    for _ in 0..3 {
        assert!(matches!(id.login("ada@example.com", "guess guess guess", None, &actor()).await, Err(IdentityError::Unauthenticated(_))));
    }
    // Locked for browsers it does not know, even with the right password...
    let locked = id.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap_err();
    let IdentityError::LoginLocked { retry_after_secs } = locked else { panic!("{locked}") };
    assert!((3500..=3600).contains(&retry_after_secs), "{retry_after_secs}");
    // ...and for a device cookie of another account or a forged one.
    let other = id.login("ada@example.com", PASSWORD, Some("00.00"), &actor()).await;
    assert!(matches!(other, Err(IdentityError::LoginLocked { .. })));
    // The owner's browser still gets in.
    id.login("ada@example.com", PASSWORD, Some(&device), &actor()).await.unwrap();
    // Unknown addresses lock the same way: the lock tells nothing.
    for _ in 0..3 {
        let _ = id.login("nobody@example.com", PASSWORD, None, &actor()).await;
    }
    assert!(matches!(id.login("nobody@example.com", PASSWORD, None, &actor()).await, Err(IdentityError::LoginLocked { .. })));
});

db_test!(async fn a_reset_lifts_the_lock(db) {
    let id = identity_with(&db, |c| c.max_failed_logins_per_hour = 2);
    verified_user(&id, "ada@example.com").await;
    for _ in 0..2 {
        let _ = id.login("ada@example.com", "guess guess guess", None, &actor()).await;
    }
    assert!(matches!(id.login("ada@example.com", PASSWORD, None, &actor()).await, Err(IdentityError::LoginLocked { .. })));
    id.request_password_reset("ada@example.com", &actor()).unwrap();
    let token = token_from_email(&id, "ada@example.com", "password_reset").await;
    id.reset_password(&token, "a brand new passphrase", &actor()).await.unwrap();
    id.login("ada@example.com", "a brand new passphrase", None, &actor()).await.unwrap();
});

db_test!(async fn sessions_end_when_idle_or_too_old(db) {
    let idle = identity_with(&db, |c| c.session_idle_minutes = 0);
    verified_user(&idle, "ada@example.com").await;
    let login = idle.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    assert!(idle.session(&login.session.token).await.is_err(), "idle at once");
    let old = identity_with(&db, |c| c.session_absolute_hours = 0);
    let login = old.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    assert!(old.session(&login.session.token).await.is_err(), "too old at once");
    let fine = identity(&db);
    let login = fine.login("ada@example.com", PASSWORD, None, &actor()).await.unwrap();
    assert!(fine.session(&login.session.token).await.is_ok());
    assert!(fine.session("not a token").await.is_err());
});

db_test!(async fn members_roles_and_invitations(db) {
    let id = identity(&db);
    let owner = verified_user(&id, "owner@example.com").await;
    let bob = verified_user(&id, "bob@example.com").await;
    let eve = verified_user(&id, "eve@example.com").await;
    let (org, _) = id.create_org_for(Some(&owner.id), "Acme").await.unwrap();
    let (other, _) = id.create_org_for(Some(&eve.id), "Evil").await.unwrap();
    assert_eq!(id.role_in(&owner.id, &org.id).await.unwrap(), Role::Owner);
    assert_eq!(id.projects(&org.id).await.unwrap()[0].name, "default");
    // Not a member: not found, not forbidden.
    assert!(matches!(id.role_in(&eve.id, &org.id).await, Err(IdentityError::NotFound("organization"))));

    let invitation = id.invite(&org.id, &owner.id, Role::Owner, "Bob@example.com", Role::Admin, &actor()).await.unwrap();
    assert_eq!(invitation.email, "bob@example.com");
    let token = token_from_email(&id, "bob@example.com", "invitation").await;
    // Someone else cannot use Bob's invitation.
    assert!(matches!(id.accept_invitation(&token, &eve.id, &actor()).await, Err(IdentityError::InvalidToken)));
    let joined = id.accept_invitation(&token, &bob.id, &actor()).await.unwrap();
    assert_eq!((joined.org.id.clone(), joined.role), (org.id.clone(), Role::Admin));
    assert!(matches!(id.accept_invitation(&token, &bob.id, &actor()).await, Err(IdentityError::InvalidToken)), "single use");
    let mine = id.memberships(&bob.id).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(id.memberships(&eve.id).await.unwrap()[0].org.id, other.id);

    // Admins cannot make owners, nor invite them; members cannot invite at all.
    assert!(matches!(
        id.set_role(&org.id, Role::Admin, &bob.id, Role::Owner, &actor()).await,
        Err(IdentityError::Forbidden(_))
    ));
    assert!(matches!(
        id.invite(&org.id, &bob.id, Role::Admin, "x@example.com", Role::Owner, &actor()).await,
        Err(IdentityError::Forbidden(_))
    ));
    assert!(matches!(
        id.invite(&org.id, &bob.id, Role::Member, "x@example.com", Role::Member, &actor()).await,
        Err(IdentityError::Forbidden(_))
    ));
    // The last owner can neither leave nor be demoted.
    assert!(matches!(
        id.remove_member(&org.id, &owner.id, Role::Owner, &owner.id, &actor()).await,
        Err(IdentityError::Conflict(_))
    ));
    assert!(matches!(
        id.set_role(&org.id, Role::Owner, &owner.id, Role::Admin, &actor()).await,
        Err(IdentityError::Conflict(_))
    ));
    // With a second owner, the first may step down.
    id.set_role(&org.id, Role::Owner, &bob.id, Role::Owner, &actor()).await.unwrap();
    id.set_role(&org.id, Role::Owner, &owner.id, Role::Member, &actor()).await.unwrap();
    assert_eq!(id.members(&org.id).await.unwrap().iter().filter(|m| m.role == Role::Owner).count(), 1);
    // Another org's member is not found here.
    assert!(matches!(
        id.remove_member(&org.id, &bob.id, Role::Owner, &eve.id, &actor()).await,
        Err(IdentityError::NotFound("member"))
    ));
});
