//! The shared SQLite writer (`modelroute_db::writer`): two crates' lanes in
//! one writer; a failing operation rolls its batch back, and the rest of
//! the batch runs again alone, so every other effect happens exactly once.

use std::sync::Arc;

use diesel::connection::SimpleConnection as _;
use diesel::{RunQueryDsl as _, SqliteConnection};
use modelroute_db::DbError;
use modelroute_db::testing::TestDb;
use modelroute_db::writer::Lane;

/// One crate's writes: a note per op (or a failure after writing it).
struct Notes;

impl Lane for Notes {
    type Op = (u32, bool);
    type Outcome = usize;
    type Error = DbError;

    fn apply(conn: &mut SqliteConnection, ops: &[&(u32, bool)]) -> Result<Vec<usize>, DbError> {
        ops.iter()
            .map(|(n, fail)| {
                let wrote = diesel::sql_query(format!("INSERT INTO notes (n) VALUES ({n})")).execute(conn)?;
                if *fail { Err(DbError::Writer("asked to fail")) } else { Ok(wrote) }
            })
            .collect()
    }
}

/// Another crate's: a running total.
struct Tally;

impl Lane for Tally {
    type Op = i64;
    type Outcome = usize;
    type Error = DbError;

    fn apply(conn: &mut SqliteConnection, ops: &[&i64]) -> Result<Vec<usize>, DbError> {
        ops.iter()
            .map(|add| Ok(diesel::sql_query(format!("UPDATE tally SET total = total + {add}")).execute(conn)?))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_share_the_writer_and_a_failure_undoes_only_itself() {
    let db = TestDb::sqlite().await;
    let mut setup = db.pool().open_sqlite_writer().unwrap().unwrap();
    setup.batch_execute("CREATE TABLE notes (n INTEGER PRIMARY KEY); CREATE TABLE tally (total INTEGER NOT NULL); INSERT INTO tally VALUES (0)").unwrap();
    let pool = Arc::new(db.pool().clone());
    assert!(pool.writer().unwrap().is_some(), "SQLite has a writer");
    let mut tasks = Vec::new();
    for n in 0..400_u32 {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let writer = pool.writer().unwrap().unwrap();
            let noted = writer.submit::<Notes>((n, n == 137)).await;
            let tallied = writer.submit::<Tally>(i64::from(n)).await;
            (n, noted.map_err(|e| e.to_string()), tallied.is_ok())
        }));
    }
    for t in tasks {
        let (n, noted, tallied) = t.await.unwrap();
        assert!(tallied);
        if n == 137 {
            assert_eq!(noted, Err("the SQLite writer failed: asked to fail".to_owned()));
        } else {
            assert_eq!(noted, Ok(1), "note {n}");
        }
    }
    #[derive(diesel::QueryableByName)]
    struct One {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    let mut one = |sql: &str| diesel::sql_query(sql).get_result::<One>(&mut setup).unwrap().v;
    assert_eq!(one("SELECT count(*) AS v FROM notes"), 399, "every note but the failed one, each once");
    assert_eq!(one("SELECT count(*) AS v FROM notes WHERE n = 137"), 0, "the failed one's write was undone");
    assert_eq!(one("SELECT total AS v FROM tally"), (0..400).sum::<i64>(), "every addition once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_has_no_writer() {
    let db = TestDb::postgres().await;
    assert!(db.pool().writer().unwrap().is_none());
}
