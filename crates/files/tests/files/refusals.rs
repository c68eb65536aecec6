//! Every way an upload is refused leaves nothing behind: no row, and no
//! object (a multipart upload already under way is aborted).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use modelroute_db::db_test;
use modelroute_files::{FileError, ListQuery, NewFile, Purpose, SettingsUpdate};
use modelroute_types::OrgId;

use crate::fixture::{Fixture, Store, body, files_on_disk, fixture, objects, org, png};

fn upload(org: &OrgId, content_type: Option<&str>) -> NewFile {
    NewFile {
        org: org.clone(),
        project: None,
        purpose: Purpose::Upload,
        filename: "x".into(),
        content_type: content_type.map(str::to_owned),
        execution: None,
    }
}

async fn nothing_left(f: &Fixture, org: &OrgId) {
    assert!(f.files.list(org, &ListQuery::default()).await.unwrap().data.is_empty(), "no row");
    assert!(objects(&f.files).await.is_empty(), "no object");
    if f.config.root.exists() {
        assert!(files_on_disk(&f.config.root).is_empty(), "no staging file: {:?}", files_on_disk(&f.config.root));
    }
}

const MIB: usize = 1024 * 1024;
const MIB_U64: u64 = 1024 * 1024;

async fn refusals(db: modelroute_db::testing::TestDb, store: Store) {
    let f = fixture(db, store, |c| c.max_upload_bytes = 12 * MIB_U64).await;
    let a = org(f.db.pool()).await;

    let e = f.files.upload(upload(&a, Some("image/png")), body(b"%PDF-1.7 not a png", 64)).await.unwrap_err();
    assert!(matches!(&e, FileError::UnsupportedType(m) if m.contains("application/pdf")), "{e}");
    let e = f.files.upload(upload(&a, Some("application/zip")), body(b"PK\x03\x04", 64)).await.unwrap_err();
    assert!(matches!(&e, FileError::UnsupportedType(m) if m.contains("not allowed")), "{e}");
    let e = f.files.upload(upload(&a, None), body(b"\0\x01\x02\x03unknown", 64)).await.unwrap_err();
    assert!(matches!(e, FileError::UnsupportedType(_)), "{e}");
    let e = f.files.upload(upload(&a, Some("text/plain")), body(b"", 64)).await.unwrap_err();
    assert!(matches!(e, FileError::Empty), "{e}");
    nothing_left(&f, &a).await;

    // Over the limit, found part-way through a multipart upload: aborted.
    let e = f.files.upload(upload(&a, Some("image/png")), body(&png(13 * MIB), 256 * 1024)).await.unwrap_err();
    assert!(matches!(e, FileError::TooLarge { limit } if limit == 12 * MIB_U64), "{e}");
    nothing_left(&f, &a).await;

    // The body fails half-way (the client's connection broke).
    let data = png(10 * MIB);
    let broken = body(&data, 256 * 1024)
        .take(30)
        .map(|c| c.map_err(|_| "never"))
        .chain(futures_util::stream::once(async { Err::<Bytes, &str>("connection reset") }));
    let e = f.files.upload(upload(&a, Some("image/png")), Box::pin(broken)).await.unwrap_err();
    assert!(matches!(&e, FileError::Interrupted(m) if m.contains("connection reset")), "{e}");
    nothing_left(&f, &a).await;

    // The request is dropped half-way (the client went away and the server
    // dropped the handler): the unfinished upload aborts itself.
    let stalls = body(&data, 256 * 1024).take(36).chain(futures_util::stream::pending());
    let dropped =
        tokio::time::timeout(Duration::from_secs(2), f.files.upload(upload(&a, Some("image/png")), Box::pin(stalls)))
            .await;
    assert!(dropped.is_err(), "the upload should still be waiting for bytes");
    for _ in 0..100 {
        if objects(&f.files).await.is_empty() && files_on_disk(&f.config.root).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nothing_left(&f, &a).await;

    // The quota: what fits is stored, what would pass it is refused.
    f.files
        .set_settings(&a, SettingsUpdate { quota_bytes: Some(6 * MIB_U64), ..SettingsUpdate::default() })
        .await
        .unwrap();
    f.files.upload(upload(&a, Some("image/png")), body(&png(4 * MIB), 64 * 1024)).await.unwrap();
    let e = f.files.upload(upload(&a, Some("image/png")), body(&png(3 * MIB), 64 * 1024)).await.unwrap_err();
    assert!(
        matches!(e, FileError::QuotaExceeded { quota, used } if quota == 6 * MIB_U64 && used == 4 * MIB_U64),
        "{e}"
    );
    assert_eq!(objects(&f.files).await.len(), 1);
    // Another org's quota is its own.
    let b = org(f.db.pool()).await;
    f.files.upload(upload(&b, Some("image/png")), body(&png(5 * MIB), 64 * 1024)).await.unwrap();
}

db_test!(async fn refusals_leave_nothing_on_the_local_store(db) {
    refusals(db, Store::Local).await;
});

db_test!(async fn refusals_leave_nothing_on_s3(db) {
    refusals(db, Store::S3).await;
});
