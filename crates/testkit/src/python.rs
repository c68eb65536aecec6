//! A Python for the tests that run a real server written in Python (an SMTP
//! server, an S3-compatible store): `MODELROUTE_TEST_PYTHON` when it has
//! the module, else the CI venv at `~/.cache/modelroute-venv`, which is
//! created and given the package when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

fn imports(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that can `import module`, installing `pip_spec` into the venv
/// when none can. One test process sets the venv up at a time.
#[must_use]
pub fn python_with(module: &str, pip_spec: &str) -> PathBuf {
    static SETUP: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SETUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Ok(p) = std::env::var("MODELROUTE_TEST_PYTHON")
        && imports(Path::new(&p), module)
    {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/modelroute-venv");
    let python = venv.join("bin/python");
    if imports(&python, module) {
        return python;
    }
    if !python.exists() {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().unwrap();
        assert!(made.success(), "python3 -m venv failed: install python3-venv");
    }
    let installed = Command::new(venv.join("bin/pip")).args(["install", "-q", pip_spec]).status().unwrap();
    assert!(installed.success(), "pip install {pip_spec} failed");
    python
}
