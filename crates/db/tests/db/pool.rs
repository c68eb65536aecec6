//! The pool hands connections out without a test query first; a connection
//! the server has closed is still never handed out.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::RunQueryDsl as _;
use modelroute_db::DbConn;
use modelroute_db::testing::TestDb;

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

async fn backend_pid(conn: &mut modelroute_db::PgConn) -> diesel::QueryResult<i32> {
    Ok(diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(conn).await?.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_handed_out_again() {
    let db = TestDb::postgres().await;
    let DbConn::Postgres(mut first) = db.pool().get().await.unwrap() else { panic!("postgres") };
    let pid = backend_pid(&mut first).await.unwrap();
    // Another session ends that backend, as a restart or an idle timeout would.
    let DbConn::Postgres(mut other) = db.pool().get().await.unwrap() else { panic!("postgres") };
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})")).execute(&mut other).await.unwrap();
    drop((first, other));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every connection handed out now works: the dead one was dropped, not reused.
    for _ in 0..4 {
        let DbConn::Postgres(mut conn) = db.pool().get().await.unwrap() else { panic!("postgres") };
        assert_ne!(backend_pid(&mut conn).await.expect("a live connection"), pid);
    }
}
