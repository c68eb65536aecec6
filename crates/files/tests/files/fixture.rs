//! A file service over a fresh database and a fresh store: a temporary
//! folder, or a bucket on a moto server of the test's own. The moto server
//! runs with a Python that has `moto[server]` (`MODELROUTE_TEST_PYTHON`,
//! then the CI venv at `~/.cache/modelroute-venv`, installed there when
//! missing).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use diesel_async::RunQueryDsl as _;
use futures_util::{Stream, TryStreamExt as _};
use modelroute_db::schema::orgs;
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, DbPool};
use modelroute_files::{Download, Files, FilesConfig, StoreKind};
use modelroute_testkit::python::python_with;
use modelroute_types::{OrgId, Secret, time};
use object_store::ObjectStoreExt as _;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Store {
    Local,
    S3,
}

pub(crate) struct Fixture {
    pub(crate) db: TestDb,
    pub(crate) files: Files,
    pub(crate) config: FilesConfig,
    _dir: tempfile::TempDir,
    _moto: Option<Moto>,
}

pub(crate) const LINK_KEY: [u8; 32] = [42; 32];

pub(crate) async fn fixture(db: TestDb, store: Store, tweak: impl FnOnce(&mut FilesConfig)) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut config = FilesConfig { root: dir.path().join("files"), ..FilesConfig::default() };
    let moto = match store {
        Store::Local => None,
        Store::S3 => {
            let moto = Moto::start().await;
            let bucket = format!("mr-test-{}", uuid_hex());
            let made = reqwest::Client::new().put(format!("{}/{bucket}", moto.url)).send().await.unwrap();
            assert!(made.status().is_success(), "creating the bucket: {}", made.status());
            config.store = StoreKind::S3;
            config.s3.bucket = bucket;
            config.s3.endpoint = Some(moto.url.clone());
            config.s3.region = Some("us-east-1".into());
            config.s3.allow_http = true;
            config.s3.access_key_id = Secret::new("testing");
            config.s3.secret_access_key = Secret::new("testing");
            Some(moto)
        }
    };
    tweak(&mut config);
    let files = Files::new(db.pool().clone(), config.clone(), &LINK_KEY, "https://api.modelroute.test").unwrap();
    Fixture { db, files, config, _dir: dir, _moto: moto }
}

fn uuid_hex() -> String {
    OrgId::new().as_str().trim_start_matches("org_").to_owned()
}

/// A new org row (the files table references it).
pub(crate) async fn org(pool: &DbPool) -> OrgId {
    use diesel::ExpressionMethods as _;
    let id = OrgId::new();
    let values = (orgs::id.eq(id.as_str()), orgs::name.eq("test org"), orgs::created_at.eq(time::now()));
    match pool.get().await.unwrap() {
        DbConn::Postgres(mut c) => diesel::insert_into(orgs::table).values(values).execute(&mut *c).await.unwrap(),
        DbConn::Sqlite(mut c) => diesel::insert_into(orgs::table).values(values).execute(&mut *c).await.unwrap(),
    };
    id
}

/// `data` as a body stream of `chunk`-byte pieces.
pub(crate) fn body(data: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, Infallible>> + Unpin + use<> {
    let pieces: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
    futures_util::stream::iter(pieces.into_iter().map(Ok))
}

/// A PNG signature followed by `len - 8` deterministic bytes.
pub(crate) fn png(len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend((0..len.saturating_sub(8)).map(|i| u8::try_from(i * 31 % 251).unwrap()));
    data
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn read_all(download: Download) -> Vec<u8> {
    download
        .body
        .try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap()
}

/// Every object in the store.
pub(crate) async fn objects(files: &Files) -> Vec<String> {
    files.object_store().list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap()
}

/// Every file on the local store's disk, staging files of unfinished
/// uploads included (the store's own listing hides those).
pub(crate) fn files_on_disk(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { walk(&p, out) } else { out.push(p) }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

pub(crate) async fn object_exists(files: &Files, key: &str) -> bool {
    files.object_store().head(&object_store::path::Path::from(key)).await.is_ok()
}

// --- moto ------------------------------------------------------------------

pub(crate) struct Moto {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub(crate) async fn start() -> Self {
        let python =
            tokio::task::spawn_blocking(|| python_with("moto.server, flask_cors", "moto[server]>=5,<6")).await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self { child, url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client.get(format!("{}/moto-api/", moto.url)).send().await.is_ok() {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("moto did not start on port {port}");
    }
}
