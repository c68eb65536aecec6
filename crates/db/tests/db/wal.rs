//! WAL checkpoints off the writer's thread (`modelroute_db::wal`).

use std::time::Duration;

use diesel::connection::SimpleConnection as _;
use modelroute_db::testing::TestDb;
use modelroute_db::wal::{WalCheckpointer, checkpoint_passive};

/// ~36 pages of rows per commit.
const COMMIT: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8) \
     INSERT INTO filler (v) SELECT hex(randomblob(2000)) FROM n";

/// Writes `commits` transactions as the ledger's writer does (autocheckpoint
/// off, `after_commit` after each). The WAL's largest size.
fn write(db: &TestDb, commits: usize) -> u64 {
    let pool = db.pool().clone();
    let wal = db.sqlite_path().unwrap().with_extension("db-wal");
    let ckpt = WalCheckpointer::start(&pool, Duration::from_millis(2), 200).expect("started");
    let mut conn = pool.open_sqlite_writer().unwrap().expect("SQLite");
    ckpt.take_over(&mut conn).unwrap();
    conn.batch_execute("CREATE TABLE filler (v TEXT NOT NULL)").unwrap();
    let (mut finished, mut biggest) = (0, 0);
    for _ in 0..commits {
        conn.immediate_transaction(|c| c.batch_execute(COMMIT)).unwrap();
        if ckpt.after_commit(&mut conn).unwrap().is_some_and(|c| c.complete()) {
            finished += 1;
        }
        biggest = biggest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(finished > 0, "the writer never finished a checkpoint");
    biggest
}

/// The ledger's writer commits continuously and leaves checkpoints to the
/// thread: past the cap it finishes one, so the WAL starts again from its
/// beginning and stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_writer_keeps_its_wal_bounded() {
    let db = TestDb::sqlite().await;
    let biggest = tokio::task::spawn_blocking(move || {
        let biggest = write(&db, 400);
        // Once the writer stops, a checkpoint catches up (the thread may
        // still be finishing its last one: busy).
        let mut conn = db.pool().open_sqlite_writer().unwrap().unwrap();
        let caught_up = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            checkpoint_passive(&mut conn).unwrap().complete()
        });
        assert!(caught_up, "the WAL was never wholly checkpointed");
        biggest
    })
    .await
    .unwrap();
    // Measured: ~1.5 MiB with the writer's part (cap 200 pages, 0.8 MiB),
    // 17 MiB without it. Under a loaded CI run (the suite's other tests on
    // both cores) it once reached 4.03 MiB: the checkpoint thread, descheduled
    // while it holds the checkpoint, makes the writer's attempts busy for a
    // few commits. 8 MiB still tells bounded from unbounded.
    assert!(biggest < 8 * 1024 * 1024, "the WAL grew to {biggest} bytes");
}
