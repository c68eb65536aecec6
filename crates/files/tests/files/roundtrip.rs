//! Upload, read back whole and by ranges, list, link, delete — and another
//! org's id changes nothing — on each backend and each store.

use modelroute_db::db_test;
use modelroute_files::{ByteRange, FileError, ListQuery, NewFile, Purpose};
use modelroute_types::{FileId, time};

use crate::fixture::{Store, body, fixture, object_exists, objects, org, png, read_all, sha256_hex};

fn upload(org: &modelroute_types::OrgId, name: &str, content_type: Option<&str>) -> NewFile {
    NewFile {
        org: org.clone(),
        project: None,
        purpose: Purpose::Upload,
        filename: name.into(),
        content_type: content_type.map(str::to_owned),
        execution: None,
    }
}

async fn round_trip(db: modelroute_db::testing::TestDb, store: Store) {
    let f = fixture(db, store, |_| {}).await;
    let (a, b) = (org(f.db.pool()).await, org(f.db.pool()).await);

    // A small file (one put) and a large one (a multipart upload of three parts).
    let small = png(40_000);
    let s = f.files.upload(upload(&a, "../../etc/cat.png", Some("image/png")), body(&small, 4096)).await.unwrap();
    assert_eq!(s.size_bytes, 40_000);
    assert_eq!(s.sha256, sha256_hex(&small));
    assert_eq!(s.filename, "cat.png", "path components are dropped");
    assert_eq!(s.content_type, "image/png");
    assert_eq!(s.detected_type.as_deref(), Some("image/png"));
    let ttl = chrono::Duration::seconds(i64::try_from(f.config.upload_ttl_secs).unwrap());
    assert_eq!(s.expires_at, Some(s.created_at + ttl));
    let large = png(20 * 1024 * 1024 + 123);
    let l = f.files.upload(upload(&a, "big.png", None), body(&large, 256 * 1024)).await.unwrap();
    assert_eq!(l.size_bytes, u64::try_from(large.len()).unwrap());
    assert_eq!(l.sha256, sha256_hex(&large));
    assert_eq!(l.content_type, "image/png", "detected when none was declared");
    assert_eq!(read_all(f.files.open(&a, &l.id, None).await.unwrap()).await, large);
    assert_eq!(objects(&f.files).await.len(), 2);

    // Whole and ranges.
    let whole = f.files.open(&a, &s.id, None).await.unwrap();
    assert!(!whole.partial);
    assert_eq!(read_all(whole).await, small);
    let r = f.files.open(&a, &s.id, Some(ByteRange::FromTo(100, 199))).await.unwrap();
    assert_eq!((r.range.clone(), r.partial), (100..200, true));
    assert_eq!(read_all(r).await, &small[100..200]);
    let r = f.files.open(&a, &s.id, Some(ByteRange::From(39_990))).await.unwrap();
    assert_eq!(read_all(r).await, &small[39_990..]);
    let r = f.files.open(&a, &s.id, Some(ByteRange::Suffix(5))).await.unwrap();
    assert_eq!(read_all(r).await, &small[39_995..]);
    let r = f.files.open(&a, &s.id, Some(ByteRange::FromTo(39_999, 1_000_000))).await.unwrap();
    assert_eq!(read_all(r).await, &small[39_999..], "an end past the file is cut to it");
    assert!(matches!(
        f.files.open(&a, &s.id, Some(ByteRange::From(40_000))).await,
        Err(FileError::RangeNotSatisfiable { size: 40_000 })
    ));

    // Listing: newest first, cursor pages, filters.
    let page = f.files.list(&a, &ListQuery { limit: Some(1), ..ListQuery::default() }).await.unwrap();
    assert_eq!(page.data.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&l.id]);
    assert!(page.has_more);
    let next = ListQuery { limit: Some(1), after: Some(l.id.clone()), ..ListQuery::default() };
    let page = f.files.list(&a, &next).await.unwrap();
    assert_eq!(page.data[0].id, s.id);
    assert!(!page.has_more);
    let outputs = ListQuery { purpose: Some(Purpose::Output), ..ListQuery::default() };
    assert!(f.files.list(&a, &outputs).await.unwrap().data.is_empty());
    assert!(matches!(
        f.files.list(&a, &ListQuery { limit: Some(101), ..ListQuery::default() }).await,
        Err(FileError::InvalidInput { field: "limit", .. })
    ));

    // Another org sees nothing, reads nothing, deletes nothing.
    assert!(f.files.list(&b, &ListQuery::default()).await.unwrap().data.is_empty());
    assert!(matches!(f.files.get(&b, &s.id).await, Err(FileError::NotFound(_))));
    assert!(matches!(f.files.open(&b, &s.id, None).await, Err(FileError::NotFound(_))));
    assert!(matches!(f.files.read_inline(&b, &s.id).await, Err(FileError::NotFound(_))));
    assert!(matches!(f.files.delete(&b, &s.id).await, Err(FileError::NotFound(_))));
    assert_eq!(f.files.get(&a, &s.id).await.unwrap(), s);
    assert_eq!(f.files.usage(&b).await.unwrap().files, 0);
    let usage = f.files.usage(&a).await.unwrap();
    assert_eq!((usage.files, usage.bytes), (2, s.size_bytes + l.size_bytes));

    // Signed links: good until they expire; any change breaks them.
    let (url, expires_at) = f.files.link(&s.id, Some(60)).unwrap();
    assert!(url.starts_with(&format!("https://api.modelroute.test/v1/files/{}/content?expires=", s.id)));
    let query = url.split_once('?').unwrap().1;
    let expires: i64 = query.split('&').next().unwrap().trim_start_matches("expires=").parse().unwrap();
    let signature = query.split_once("signature=").unwrap().1;
    assert_eq!(expires, time::unix_seconds(expires_at));
    let got = f.files.open_signed(&s.id, expires, signature, None).await.unwrap();
    assert_eq!(read_all(got).await, small);
    assert!(matches!(f.files.open_signed(&l.id, expires, signature, None).await, Err(FileError::BadSignature)));
    assert!(matches!(f.files.open_signed(&s.id, expires + 1, signature, None).await, Err(FileError::BadSignature)));
    let (old, _) = f.files.link(&s.id, Some(1)).unwrap();
    let old_query = old.split_once('?').unwrap().1;
    let old_expires: i64 = old_query.split('&').next().unwrap().trim_start_matches("expires=").parse().unwrap();
    let old_sig = old_query.split_once("signature=").unwrap().1;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(matches!(f.files.open_signed(&s.id, old_expires, old_sig, None).await, Err(FileError::LinkExpired)));
    assert!(f.files.link(&s.id, Some(0)).is_err());
    assert!(f.files.link(&s.id, Some(f.config.max_link_ttl_secs + 1)).is_err());

    // Inline reads (an execution's input) and their cap.
    let (rec, bytes) = f.files.read_inline(&a, &s.id).await.unwrap();
    assert_eq!((rec.id.clone(), bytes.as_ref()), (s.id.clone(), small.as_slice()));
    assert!(matches!(f.files.read_inline(&a, &l.id).await, Err(FileError::InvalidInput { field: "file", .. })));

    // Delete: the row, then the object; a link to it stops working.
    let key = format!("orgs/{a}/{}", s.id);
    assert!(object_exists(&f.files, &key).await);
    f.files.delete(&a, &s.id).await.unwrap();
    assert!(matches!(f.files.get(&a, &s.id).await, Err(FileError::NotFound(_))));
    assert!(!object_exists(&f.files, &key).await);
    assert!(matches!(f.files.open_signed(&s.id, expires, signature, None).await, Err(FileError::NotFound(_))));
    assert!(matches!(f.files.delete(&a, &s.id).await, Err(FileError::NotFound(_))));
    assert!(matches!(f.files.get(&a, &FileId::new()).await, Err(FileError::NotFound(_))));
    assert_eq!(objects(&f.files).await, vec![format!("orgs/{a}/{}", l.id)]);
}

db_test!(async fn round_trip_on_the_local_store(db) {
    round_trip(db, Store::Local).await;
});

db_test!(async fn round_trip_on_s3(db) {
    round_trip(db, Store::S3).await;
});
