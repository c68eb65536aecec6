//! A retention sweep killed with SIGKILL half-way (the real
//! `modelroute retention sweep` process, batches of one row) leaves what it
//! had deleted deleted and nothing else touched; the next sweep deletes
//! exactly what was left due, and not one row that was not. On SQLite and
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_query;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::login_failures;
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, db_test};

const BIN: &str = env!("CARGO_BIN_EXE_modelroute");
const DUE: usize = 5_000;
const KEPT: usize = 100;

fn sweep(db: &TestDb, dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env("MODELROUTE_DATABASE__URL", db.config().url.expose())
        .env("MODELROUTE_IDENTITY__SERVER_SECRET", "kill-test-secret-0123456789abcdef-0123")
        .env("MODELROUTE_PRIVACY__BATCH", "1")
        .env("RUST_LOG", "warn")
        .args(["retention", "sweep", "--class", "login_failures"]);
    c
}

/// Failed logins: `DUE` past the 24 hours, `KEPT` within them.
async fn seed(db: &TestDb, now: NaiveDateTime) {
    let at = |i: usize| {
        let t = if i < DUE { now - Duration::hours(25) } else { now - Duration::hours(1) };
        t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    };
    let all: Vec<usize> = (0..DUE + KEPT).collect();
    for chunk in all.chunks(500) {
        let values: Vec<String> =
            chunk.iter().map(|i| format!("('lf_{i:08}', 'x@example.com', '{}')", at(*i))).collect();
        let q = sql_query(format!("INSERT INTO login_failures (id, email, failed_at) VALUES {}", values.join(", ")));
        match db.pool().get().await.unwrap() {
            DbConn::Postgres(mut c) => q.execute(&mut c).await.unwrap(),
            DbConn::Sqlite(mut c) => q.execute(&mut c).await.unwrap(),
        };
    }
}

/// (rows past the cutoff, rows within it).
async fn counts(db: &TestDb, now: NaiveDateTime) -> (i64, i64) {
    let cutoff = now - Duration::hours(24);
    let due = login_failures::table.filter(login_failures::failed_at.lt(cutoff)).count();
    let kept = login_failures::table.filter(login_failures::failed_at.ge(cutoff)).count();
    match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => (due.get_result(&mut c).await.unwrap(), kept.get_result(&mut c).await.unwrap()),
        DbConn::Sqlite(mut c) => (due.get_result(&mut c).await.unwrap(), kept.get_result(&mut c).await.unwrap()),
    }
}

db_test!(async fn a_sweep_killed_half_way_resumes_without_double_effects(db) {
    let dir = tempfile::tempdir().unwrap();
    let now = modelroute_types::time::now();
    seed(&db, now).await;

    // The sweep's progress bar on stderr says how far it got: SIGKILL it
    // once it has deleted some hundreds of rows, well short of all.
    let mut child = sweep(&db, dir.path()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0_u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(buf.get(..n).unwrap_or_default());
            let text = String::from_utf8_lossy(&seen);
            let deleted = text
                .rsplit('\r')
                .find_map(|l| l.split_whitespace().last()?.split_once('/')?.0.parse::<usize>().ok())
                .unwrap_or(0);
            if deleted >= 300 {
                let _ = tx.send(());
                break;
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the sweep reports progress");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished");

    let (due, kept) = counts(&db, now).await;
    let left = usize::try_from(due).unwrap();
    assert!(left > 0 && left < DUE - 299, "killed half-way: {left} of {DUE} left");
    assert_eq!(kept, i64::try_from(KEPT).unwrap(), "nothing within its period was deleted");

    // The next sweep deletes exactly what was left, and nothing else.
    let out = sweep(&db, dir.path()).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("deleted {left} of {left} due")), "{stdout}");
    assert_eq!(counts(&db, now).await, (0, i64::try_from(KEPT).unwrap()));
});
