//! Time-to-live per org and purpose, the expiry sweep, the orphan sweep,
//! and deleting every file of an org.

use chrono::Duration;
use modelroute_db::db_test;
use modelroute_files::{FileError, ListQuery, NewFile, Purpose, SettingsUpdate};
use modelroute_types::{ExecutionId, OrgId, time};
use object_store::{ObjectStoreExt as _, PutPayload};

use crate::fixture::{Store, body, fixture, object_exists, objects, org, png};

fn new(org: &OrgId, purpose: Purpose) -> NewFile {
    NewFile {
        org: org.clone(),
        project: None,
        purpose,
        filename: "x.png".into(),
        content_type: Some("image/png".into()),
        execution: (purpose == Purpose::Output).then(ExecutionId::new),
    }
}

db_test!(async fn time_to_live_is_per_org_and_the_sweeps_delete_what_lapsed(db) {
    let f = fixture(db, Store::Local, |_| {}).await;
    let (a, b) = (org(f.db.pool()).await, org(f.db.pool()).await);
    let defaults = f.files.settings(&a).await.unwrap();
    assert!(defaults.upload_ttl_is_default && defaults.output_ttl_is_default);
    assert_eq!(defaults.upload_ttl_secs, f.config.upload_ttl_secs);

    let up = f.files.upload(new(&a, Purpose::Upload), body(&png(1000), 100)).await.unwrap();
    let out = f.files.upload(new(&a, Purpose::Output), body(&png(1000), 100)).await.unwrap();
    let theirs = f.files.upload(new(&b, Purpose::Upload), body(&png(1000), 100)).await.unwrap();
    assert_eq!(out.expires_at, Some(out.created_at + Duration::seconds(7 * 86_400)));

    // Out-of-range values are refused and change nothing.
    for bad in [0, 10, f.config.max_ttl_secs + 1] {
        let e = f.files
            .set_settings(&a, SettingsUpdate { upload_ttl_secs: Some(bad), ..SettingsUpdate::default() })
            .await
            .unwrap_err();
        assert!(matches!(e, FileError::InvalidInput { field: "upload_ttl_secs", .. }), "{e}");
    }
    assert_eq!(f.files.settings(&a).await.unwrap(), defaults);

    // A shorter time-to-live applies to the org's existing files of that purpose.
    let s = f.files
        .set_settings(&a, SettingsUpdate { upload_ttl_secs: Some(3_600), ..SettingsUpdate::default() })
        .await
        .unwrap();
    assert!(!s.upload_ttl_is_default && s.output_ttl_is_default);
    let up = f.files.get(&a, &up.id).await.unwrap();
    assert_eq!(up.expires_at, Some(up.created_at + Duration::seconds(3_600)));
    assert_eq!(f.files.get(&a, &out.id).await.unwrap().expires_at, out.expires_at, "outputs keep theirs");
    assert_eq!(f.files.get(&b, &theirs.id).await.unwrap().expires_at, theirs.expires_at, "another org keeps its own");
    assert!(f.files.settings(&b).await.unwrap().upload_ttl_is_default);

    // The sweep deletes what lapsed, row and object, and nothing else.
    let now = time::now();
    assert_eq!(f.files.sweep_expired(now).await.unwrap(), 0);
    assert_eq!(f.files.sweep_expired(now + Duration::seconds(3_601)).await.unwrap(), 1);
    assert!(matches!(f.files.get(&a, &up.id).await, Err(FileError::NotFound(_))));
    assert!(!object_exists(&f.files, &format!("orgs/{a}/{}", up.id)).await);
    assert!(f.files.get(&a, &out.id).await.is_ok());
    assert!(f.files.get(&b, &theirs.id).await.is_ok());
    assert_eq!(objects(&f.files).await.len(), 2);

    // Back to the default.
    let s = f.files.set_settings(&a, SettingsUpdate::default()).await.unwrap();
    assert_eq!(s, defaults);
});

db_test!(async fn an_object_without_a_row_is_removed_after_the_grace_period(db) {
    let f = fixture(db, Store::Local, |c| c.orphan_grace_secs = 3_600).await;
    let a = org(f.db.pool()).await;
    let kept = f.files.upload(new(&a, Purpose::Upload), body(&png(1000), 100)).await.unwrap();
    // A crash between the object and its row leaves this.
    let orphan = format!("orgs/{a}/file_0190000000007000800000000000abcd");
    f.files.object_store().put(&object_store::path::Path::from(orphan.as_str()), PutPayload::from_static(b"x")).await.unwrap();

    assert_eq!(f.files.sweep_orphans(time::now()).await.unwrap(), 0, "within the grace period");
    assert!(object_exists(&f.files, &orphan).await);
    let later = time::now() + Duration::seconds(3_700);
    assert_eq!(f.files.sweep_orphans(later).await.unwrap(), 1);
    assert!(!object_exists(&f.files, &orphan).await);
    assert!(object_exists(&f.files, &format!("orgs/{a}/{}", kept.id)).await, "a file's object is never an orphan");
    assert_eq!(f.files.sweep_orphans(later).await.unwrap(), 0);
});

db_test!(async fn deleting_an_org_s_files_leaves_other_orgs_alone(db) {
    let f = fixture(db, Store::Local, |c| c.sweep_batch = 2).await;
    let (a, b) = (org(f.db.pool()).await, org(f.db.pool()).await);
    for _ in 0..5 {
        f.files.upload(new(&a, Purpose::Upload), body(&png(100), 100)).await.unwrap();
    }
    let theirs = f.files.upload(new(&b, Purpose::Output), body(&png(100), 100)).await.unwrap();
    assert_eq!(f.files.delete_all_of(&a).await.unwrap(), 5);
    assert!(f.files.list(&a, &ListQuery::default()).await.unwrap().data.is_empty());
    assert_eq!(objects(&f.files).await, vec![format!("orgs/{b}/{}", theirs.id)]);
    assert_eq!(f.files.usage(&b).await.unwrap().files, 1);
});
