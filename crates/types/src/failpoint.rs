//! Crash points for the crash test: when the environment variable
//! `MODELROUTE_FAILPOINT` names a point, the process aborts there, the way
//! a power cut or an OOM kill would stop it. Unset (always, outside that
//! test), a point costs one comparison against a value read once.

use std::sync::LazyLock;

static ARMED: LazyLock<Option<String>> = LazyLock::new(|| std::env::var("MODELROUTE_FAILPOINT").ok());

/// Aborts the process when `MODELROUTE_FAILPOINT` is `name`.
#[allow(clippy::print_stderr)]
pub fn failpoint(name: &str) {
    if ARMED.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
