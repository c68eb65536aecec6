//! The SMTP path of the outbox against a real SMTP server: Python's
//! `aiosmtpd`, storing what it receives in a maildir. The test looks for a
//! Python with aiosmtpd (`MODELROUTE_TEST_PYTHON`, then the CI venv at
//! `~/.cache/modelroute-venv`), and installs it into that venv when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_identity::{Actor, Identity, IdentityConfig, ServerSecret};
use modelroute_types::Secret;

/// A Python that can run aiosmtpd.
fn python() -> PathBuf {
    modelroute_testkit::python::python_with("aiosmtpd", "aiosmtpd")
}

struct SmtpServer {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn smtp_server() -> SmtpServer {
    let maildir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(python())
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir.path().join("mail"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Owned at once: dropping it (a panic included) stops the server.
    let server = SmtpServer { child, port, maildir };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("aiosmtpd did not start on port {port}");
}

fn identity(db: &TestDb, smtp_url: &str) -> Identity {
    let mut config = IdentityConfig::default();
    config.email.from = "ModelRoute <no-reply@modelroute.test>".into();
    config.email.smtp_url = Secret::new(smtp_url);
    config.public_url = "https://app.modelroute.test".into();
    Identity::new(db.pool().clone(), ServerSecret::from_text(&"s".repeat(32)).unwrap()).with_config(&config).unwrap()
}

fn received(maildir: &Path) -> Vec<String> {
    std::fs::read_dir(maildir.join("mail/new"))
        .map(|d| d.filter_map(Result::ok).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
        .unwrap_or_default()
}

db_test!(async fn the_outbox_delivers_over_smtp_once_and_retries_failures(db) {
    let server = smtp_server().await;
    // A server that is down: the email stays queued with the error, to be retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = identity(&db, &format!("smtp://127.0.0.1:{closed}"));
    down.sign_up("ada@example.com", "correct horse battery staple", "Ada", &Actor::default()).await.unwrap();
    assert_eq!(down.deliver_pending_email().await.unwrap(), 0);
    let queued = down.outbox("ada@example.com").await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].attempts, 1);
    assert!(queued[0].sent_at.is_none());
    assert!(queued[0].last_error.is_some());

    let up = identity(&db, &format!("smtp://127.0.0.1:{}", server.port));
    up.sign_up("bob@example.com", "correct horse battery staple", "Bob", &Actor::default()).await.unwrap();
    let n = up.deliver_pending_email().await.unwrap();
    let bob = up.outbox("bob@example.com").await.unwrap();
    assert_eq!(n, 1, "Bob's is due; Ada's waits for its backoff: {:?}", bob[0].last_error);
    assert_eq!(up.deliver_pending_email().await.unwrap(), 0, "sent once");
    let sent = up.outbox("bob@example.com").await.unwrap();
    assert!(sent[0].sent_at.is_some());
    let mut mail = vec![];
    for _ in 0..100 {
        mail = received(server.maildir.path());
        if !mail.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mail.len(), 1, "{mail:?}");
    let m = &mail[0];
    assert!(m.contains("To: bob@example.com"), "{m}");
    assert!(m.contains("From: ModelRoute <no-reply@modelroute.test>"), "{m}");
    assert!(m.contains("Subject: Verify your email address"), "{m}");
    assert!(m.contains("https://app.modelroute.test/verify-email?token="), "{m}");
});
