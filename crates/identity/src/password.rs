//! Passwords: the policy (8–128 characters, not among the most common
//! breached passwords, not the email address) and Argon2id hashing with
//! OWASP's parameters (19 MiB, t=2, p=1). Hashing runs on the blocking pool:
//! it takes tens of milliseconds of CPU by design.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::IdentityError;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters (never truncated).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Argon2id memory cost in KiB (OWASP: 19 MiB with t=2, p=1).
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

static BREACHED: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/breached-passwords.txt").lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect()
});

/// How many breached passwords the policy refuses.
#[must_use]
pub fn breached_password_count() -> usize {
    BREACHED.len()
}

/// Checks a new password against the policy.
///
/// # Errors
/// [`IdentityError::InvalidInput`] on `password`, saying what is wrong.
pub fn check_password_policy(password: &str, email: &str) -> Result<(), IdentityError> {
    let invalid = |message: &str| IdentityError::InvalidInput { field: "password", message: message.into() };
    let n = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(invalid("must be 8 to 128 characters"));
    }
    let lower = password.to_lowercase();
    if BREACHED.contains(lower.as_str()) {
        return Err(invalid("is one of the most common breached passwords; choose another"));
    }
    let email = email.to_lowercase();
    if lower == email || email.split('@').next().is_some_and(|local| local == lower) {
        return Err(invalid("must not be your email address"));
    }
    Ok(())
}

fn argon2() -> Result<Argon2<'static>, IdentityError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| IdentityError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> Result<String, IdentityError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| IdentityError::Internal("the system random source failed".into()))?;
    let hash = argon2()?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| IdentityError::Internal(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

/// Hashes a password (Argon2id, random 16-byte salt) into a PHC string.
///
/// # Errors
/// [`IdentityError::Internal`] when the random source or the task fails.
pub async fn hash_password(password: &str) -> Result<String, IdentityError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| IdentityError::Internal(format!("hashing task: {e}")))?
}

/// A hash of a password nobody has, verified against when the account does
/// not exist or has no password, so that the answer takes as long as a real
/// check (no account enumeration by timing).
static DUMMY_HASH: LazyLock<Option<String>> = LazyLock::new(|| hash_blocking("no account has this password").ok());

/// Whether `password` matches the stored PHC `hash`; with no hash, spends
/// the same time and answers false. The parameters are read from the hash,
/// so hashes made with older parameters still verify.
pub async fn verify_password(password: &str, hash: Option<&str>) -> bool {
    let password = password.to_owned();
    let hash = hash.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let Ok(argon2) = argon2() else { return false };
        match hash {
            Some(h) => argon2.verify_password(password.as_bytes(), h.as_str()).is_ok(),
            None => {
                if let Some(dummy) = DUMMY_HASH.as_deref() {
                    let _ = argon2.verify_password(password.as_bytes(), dummy);
                }
                false
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_long_breached_and_the_email() {
        assert!(breached_password_count() > 10_000);
        let err = |p: &str| check_password_policy(p, "ada@example.com").unwrap_err().to_string();
        assert!(err("short").contains("8 to 128"));
        assert!(err(&"x".repeat(129)).contains("8 to 128"));
        assert!(err("password").contains("breached"));
        assert!(err("Trustno1").contains("breached"), "case-insensitive");
        assert!(err("ada@example.com").contains("email"));
        check_password_policy("correct horse battery staple", "ada@example.com").unwrap();
        // 128 multi-byte characters are fine: counted in characters, not bytes.
        check_password_policy(&"é".repeat(128), "ada@example.com").unwrap();
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_salted() {
        let a = hash_password("correct horse battery staple").await.unwrap();
        let b = hash_password("correct horse battery staple").await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a random salt each time");
        assert!(verify_password("correct horse battery staple", Some(&a)).await);
        assert!(!verify_password("correct horse battery stapl", Some(&a)).await);
        // The whole password counts: no truncation at 72 bytes (bcrypt's limit).
        let long = "y".repeat(100);
        let h = hash_password(&long).await.unwrap();
        assert!(!verify_password(&"y".repeat(99), Some(&h)).await);
        assert!(!verify_password("anything", None).await);
    }
}
