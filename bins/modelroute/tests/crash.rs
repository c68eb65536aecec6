//! The crash test (ledger invariant L12): the real `modelroute serve`
//! process is killed (SIGABRT, through `MODELROUTE_FAILPOINT`) between each
//! pair of steps of a paid execution — after the hold, before the provider
//! call, before the settlement, inside the settlement's transaction (SQLite:
//! PostgreSQL resolves in one function call), after the settlement — then
//! started again. After the sweeper has run, no money is held, the balance is
//! either untouched or charged exactly once, the execution's record is ended,
//! `modelroute ledger verify` passes, and the server serves again. On SQLite
//! and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use modelroute_db::testing::TestDb;
use modelroute_db::{Backend, DbConn, db_test};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_modelroute");
/// What the bootstrap grants, in nano-dollars.
const STARTING: i64 = 10_000_000_000;

struct Server {
    child: Child,
    port: u16,
    key: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(db: &TestDb, dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env("MODELROUTE_DATABASE__URL", db.config().url.expose())
        .env("MODELROUTE_SERVER__BIND", "127.0.0.1:0")
        .env("MODELROUTE_IDENTITY__SERVER_SECRET", "crash-test-secret-0123456789abcdef-0123")
        .env("MODELROUTE_LEDGER__HOLD_TIMEOUT_SECS", "1")
        .env("MODELROUTE_LEDGER__SWEEP_INTERVAL_SECS", "1")
        // The sweep is a job: one the crashed process had claimed runs again once its lease lapses.
        .env("MODELROUTE_JOBS__LEASE_SECS", "1")
        .env("RUST_LOG", "warn")
        .env_remove("MODELROUTE_FAILPOINT");
    c
}

/// Starts `modelroute serve` and reads its port (and, on first start, the key).
fn start(db: &TestDb, dir: &std::path::Path, failpoint: Option<&str>) -> Server {
    let mut c = command(db, dir);
    if let Some(f) = failpoint {
        c.env("MODELROUTE_FAILPOINT", f);
    }
    spawn_serve(c)
}

/// Runs `modelroute serve` with `c` and reads its port (and, on first start, the key).
fn spawn_serve(mut c: Command) -> Server {
    let mut child = c.arg("serve").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server { child, port: 0, key: None };
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let line = line.trim();
        if line.starts_with("mr_") {
            server.key = Some(line.to_owned());
        }
        if let Some(port) = line.strip_prefix("ModelRoute listening on port ") {
            server.port = port.parse().unwrap();
            return server;
        }
    }
    panic!("the server did not start");
}

/// One HTTP/1.1 request; `None` when the connection dies without an answer.
fn http(port: u16, method: &str, path: &str, key: &str, body: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    if s.read_to_string(&mut raw).is_err() || raw.is_empty() {
        return None;
    }
    let status = raw.get(9..12)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn chat(port: u16, key: &str) -> Option<(u16, Value)> {
    let body = r#"{"model":"builtin/echo","max_tokens":64,"messages":[{"role":"user","content":"count to three"}]}"#;
    http(port, "POST", "/v1/chat/completions", key, body)
}

fn balance(port: u16, key: &str) -> (i64, i64) {
    let (status, b) = http(port, "GET", "/v1/billing/balance", key, "").unwrap();
    assert_eq!(status, 200, "{b}");
    (b["available"]["nano_usd"].as_i64().unwrap(), b["held"]["nano_usd"].as_i64().unwrap())
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    status: String,
}

async fn execution_statuses(db: &TestDb) -> Vec<String> {
    let q = "SELECT status FROM executions ORDER BY id";
    let rows: Vec<Row> = match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => sql_query(q).load(&mut c).await.unwrap(),
        DbConn::Sqlite(mut c) => sql_query(q).load(&mut c).await.unwrap(),
    };
    rows.into_iter().map(|r| r.status).collect()
}

/// What a crash at the point leaves the customer paying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Charged {
    Nothing,
    Once,
}

async fn crash_at(db: TestDb, point: &str, expect: Charged) {
    let dir = tempfile::tempdir().unwrap();
    let first = start(&db, dir.path(), Some(point));
    let key = first.key.clone().expect("the first start prints a key");
    assert_eq!(chat(first.port, &key), None, "{point}: the process dies before answering");
    let mut first = first;
    let status = first.child.wait().unwrap();
    assert!(!status.success(), "{point}: the process was aborted");

    let again = start(&db, dir.path(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (available, held) = loop {
        let (available, held) = balance(again.port, &key);
        let ended = !execution_statuses(&db).await.iter().any(|s| s == "running");
        if (held == 0 && ended) || Instant::now() > deadline {
            break (available, held);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(held, 0, "{point}: the sweeper released the stranded hold");
    match expect {
        Charged::Nothing => assert_eq!(available, STARTING, "{point}: nothing charged"),
        Charged::Once => {
            assert!(available < STARTING && available > STARTING - 1_000_000, "{point}: charged once: {available}");
        }
    }
    let statuses = execution_statuses(&db).await;
    assert!(statuses.iter().all(|s| s != "running"), "{point}: no record left running: {statuses:?}");

    let verify = command(&db, dir.path()).args(["ledger", "verify"]).output().unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && out.contains("ledger is sound"), "{point}: {out}");
    // And the server serves again, charging exactly what it reports.
    let (status, answer) = chat(again.port, &key).unwrap();
    assert_eq!(status, 200, "{answer}");
    let (after, held) = balance(again.port, &key);
    assert_eq!(held, 0);
    assert!(after < available);
}

db_test!(async fn a_crash_after_the_hold_strands_no_money(db) {
    crash_at(db, "executions.after_hold", Charged::Nothing).await;
});

db_test!(async fn a_crash_before_the_provider_call_strands_no_money(db) {
    crash_at(db, "executions.before_provider", Charged::Nothing).await;
});

db_test!(async fn a_crash_before_the_settlement_strands_no_money(db) {
    crash_at(db, "executions.before_settle", Charged::Nothing).await;
});

db_test!(async fn a_crash_after_the_settlement_charges_once(db) {
    crash_at(db, "executions.after_settle", Charged::Once).await;
});

db_test!(async fn a_crash_inside_the_settlement_transaction_leaves_nothing_half_written(db) {
    // PostgreSQL settles in one function call: there is no point inside it to stop at.
    if db.pool().backend() == Backend::Sqlite {
        crash_at(db, "ledger.resolve.in_transaction", Charged::Nothing).await;
    }
});

#[derive(QueryableByName)]
struct Ended {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    cost: Option<i64>,
}

async fn async_executions(db: &TestDb) -> Vec<Ended> {
    let q = "SELECT status, cost FROM executions WHERE mode = 'async' ORDER BY id";
    match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => sql_query(q).load(&mut c).await.unwrap(),
        DbConn::Sqlite(mut c) => sql_query(q).load(&mut c).await.unwrap(),
    }
}

db_test!(async fn asynchronous_executions_killed_queued_and_running_each_end_once_after_a_restart(db) {
    let dir = tempfile::tempdir().unwrap();
    let slow = |c: &mut Command| {
        // Two run at once, each streaming for about a second: when the kill
        // comes, some are running and the rest queued.
        c.env("MODELROUTE_JOBS__QUEUES__EXECUTIONS", "2")
            .env("MODELROUTE_PROVIDERS__BUILTIN__KIND", "builtin")
            .env("MODELROUTE_PROVIDERS__BUILTIN__CHUNK_DELAY_MS", "20")
            .env("MODELROUTE_EXECUTIONS__ORPHAN_SWEEP_SECS", "1");
    };
    let mut c = command(&db, dir.path());
    slow(&mut c);
    let first = spawn_serve(c);
    let key = first.key.clone().expect("the first start prints a key");
    let prompt = "word ".repeat(50);
    let body = format!(r#"{{"model":"builtin/echo","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    for _ in 0..8 {
        let (status, e) = http(first.port, "POST", "/v1/executions", &key, &body).unwrap();
        assert_eq!(status, 201, "{e}");
    }
    let started = Instant::now();
    while !async_executions(&db).await.iter().any(|e| e.status == "running") {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let statuses: Vec<String> = async_executions(&db).await.into_iter().map(|e| e.status).collect();
    assert!(statuses.iter().any(|s| s == "running") && statuses.iter().any(|s| s == "queued"), "{statuses:?}");

    let mut c = command(&db, dir.path());
    slow(&mut c);
    let again = spawn_serve(c);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let all = async_executions(&db).await;
        if all.iter().all(|e| !matches!(e.status.as_str(), "queued" | "running")) || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended.len(), 8);
    for e in &ended {
        assert_eq!(e.status, "succeeded", "each ends, and runs to its end");
    }
    // One settlement each: the balance is charged exactly what the records say.
    let charged: i64 = ended.iter().map(|e| e.cost.unwrap()).sum();
    let (available, held) = balance(again.port, &key);
    assert_eq!((available, held), (STARTING - charged, 0));
    let verify = command(&db, dir.path()).args(["ledger", "verify"]).output().unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && out.contains("ledger is sound"), "{out}");
});
