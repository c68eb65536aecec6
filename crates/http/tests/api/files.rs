//! `/v1/files`: multipart uploads streamed to the store, downloads with
//! ranges and signed links, another org's files out of reach, every client
//! mistake a clear 4xx that leaves nothing behind, a cut-off upload cleaned
//! up, files as execution inputs, and the org's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use modelroute_db::db_test;
use modelroute_files::links::LinkSigner;
use modelroute_identity::ServerSecret;
use modelroute_providers::ProviderConfig;
use modelroute_routing::ModelConfig;
use modelroute_testkit::{StandIn, Wire};
use modelroute_types::{FileId, time};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::helpers::{Reply, TestApp};

const BOUNDARY: &str = "mr-test-boundary-7MA4YWxkTrZu0gW";

/// A part of a form: its name, and for a file its filename and type.
struct Part<'a> {
    name: &'a str,
    file: Option<(&'a str, Option<&'a str>)>,
    data: &'a [u8],
}

fn text<'a>(name: &'a str, value: &'a str) -> Part<'a> {
    Part { name, file: None, data: value.as_bytes() }
}

fn file<'a>(filename: &'a str, content_type: Option<&'a str>, data: &'a [u8]) -> Part<'a> {
    Part { name: "file", file: Some((filename, content_type)), data }
}

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match p.file {
            Some((filename, content_type)) => {
                out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{}\"; filename=\"{filename}\"\r\n", p.name)
                        .as_bytes(),
                );
                if let Some(t) = content_type {
                    out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
                }
            }
            None => {
                out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{}\"\r\n", p.name).as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn png(len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend((0..len.saturating_sub(8)).map(|i| u8::try_from(i * 7 % 256).unwrap()));
    data
}

/// Every file in the store's folder, unfinished uploads' staging files included.
fn on_disk(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { walk(&p, out) } else { out.push(p) }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

impl TestApp {
    async fn upload_with(&self, key: &str, body: Vec<u8>) -> Reply {
        let headers = [
            ("authorization", format!("Bearer {key}")),
            ("content-type", format!("multipart/form-data; boundary={BOUNDARY}")),
        ];
        self.request(Method::POST, "/v1/files", &headers, body).await
    }

    async fn upload(&self, parts: &[Part<'_>]) -> Reply {
        self.upload_with(&self.key.clone(), form(parts)).await
    }

    async fn nothing_stored(&self) {
        let listed = self.get("/v1/files").await;
        assert_eq!(listed.json["data"], json!([]), "no row: {}", listed.body);
        assert!(on_disk(&self.settings.files.root).is_empty(), "no object: {:?}", on_disk(&self.settings.files.root));
    }
}

async fn spawn(db: modelroute_db::testing::TestDb) -> TestApp {
    TestApp::spawn(db, |s| s.files.max_upload_bytes = 1024 * 1024).await
}

db_test!(async fn upload_read_range_link_delete_and_another_org_sees_nothing(db) {
    let app = spawn(db).await;
    let data = png(100_000);
    let r = app.upload(&[text("purpose", "vision"), file("photo of a cat.png", Some("image/png"), &data)]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file_"));
    assert_eq!(r.json["object"], "file");
    assert_eq!(r.json["bytes"], 100_000);
    assert_eq!(r.json["purpose"], "upload");
    assert_eq!(r.json["filename"], "photo of a cat.png");
    assert_eq!(r.json["content_type"], "image/png");
    assert!(r.json["expires_at"].as_i64().unwrap() > r.json["created_at"].as_i64().unwrap());
    assert!(!r.body.contains("orgs/"), "no storage key in an answer: {}", r.body);

    // Metadata and listing.
    assert_eq!(app.get(&format!("/v1/files/{id}")).await.json["sha256"], r.json["sha256"]);
    let listed = app.get("/v1/files?limit=10").await;
    assert_eq!((listed.json["first_id"].as_str(), listed.json["has_more"].as_bool()), (Some(id.as_str()), Some(false)));
    assert_eq!(app.get("/v1/files?purpose=nonsense").await.code(), "invalid_request");
    assert_eq!(app.get("/v1/files?limit=0").await.status, StatusCode::BAD_REQUEST);

    // Content: whole, a range, an unsatisfiable range.
    let key_header = [("authorization", format!("Bearer {}", app.key))];
    let whole = app.request(Method::GET, &format!("/v1/files/{id}/content"), &key_header, "").await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.headers["content-length"], "100000");
    assert_eq!(whole.headers["content-type"], "image/png");
    assert_eq!(whole.headers["x-content-type-options"], "nosniff");
    let disposition = whole.headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;") && disposition.contains("photo of a cat.png"), "{disposition}");
    assert_eq!(whole.body.len(), String::from_utf8_lossy(&data).len());
    let ranged = [key_header[0].clone(), ("range", "bytes=10-19".to_owned())];
    let part = app.request(Method::GET, &format!("/v1/files/{id}/content"), &ranged, "").await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers["content-range"], "bytes 10-19/100000");
    assert_eq!(part.body.as_bytes(), String::from_utf8_lossy(&data[10..20]).as_bytes());
    let beyond = [key_header[0].clone(), ("range", "bytes=100000-".to_owned())];
    let r416 = app.request(Method::GET, &format!("/v1/files/{id}/content"), &beyond, "").await;
    assert_eq!((r416.status, r416.code()), (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"));
    assert_eq!(r416.headers["content-range"], "bytes */100000");

    // A signed link works without a key; a changed or expired one is a 403.
    let link = app.post(&format!("/v1/files/{id}/links"), &json!({ "expires_in": 60 })).await;
    assert_eq!(link.status, StatusCode::CREATED, "{}", link.body);
    let url = link.json["url"].as_str().unwrap();
    let path = &url[url.find("/v1/").unwrap()..];
    let anonymous = app.send(Method::GET, path, None, None).await;
    assert_eq!((anonymous.status, anonymous.headers["content-length"].to_str().unwrap()), (StatusCode::OK, "100000"));
    let tampered = path.replace("expires=", "expires=1");
    assert_eq!(app.send(Method::GET, &tampered, None, None).await.status, StatusCode::FORBIDDEN);
    let other_file = path.replace(&id, FileId::new().as_str());
    assert_eq!(app.send(Method::GET, &other_file, None, None).await.status, StatusCode::FORBIDDEN);
    let secret = ServerSecret::from_text(app.settings.identity.server_secret.expose()).unwrap();
    let signer = LinkSigner::new(&secret.derive("file-links"));
    let past = time::unix_seconds(time::now()) - 5;
    let expired = format!("/v1/files/{id}/content?expires={past}&signature={}", signer.sign(&id.parse().unwrap(), past));
    let r = app.send(Method::GET, &expired, None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("expired"), "{}", r.body);
    let half = format!("/v1/files/{id}/content?expires={past}");
    assert_eq!(app.send(Method::GET, &half, None, None).await.status, StatusCode::FORBIDDEN);
    let file_download_url = app.get(&format!("/v1/files/{id}")).await.json["download_url"].as_str().unwrap().to_owned();
    assert!(file_download_url.contains(&format!("/v1/files/{id}/content?expires=")));
    assert_eq!(app.send(Method::GET, &format!("/v1/files/{id}/content"), None, None).await.status, StatusCode::UNAUTHORIZED);

    // Another org: not found for metadata, content, links and delete; its list is empty.
    let other = app.other_key().await;
    for (method, path) in [
        (Method::GET, format!("/v1/files/{id}")),
        (Method::GET, format!("/v1/files/{id}/content")),
        (Method::POST, format!("/v1/files/{id}/links")),
        (Method::DELETE, format!("/v1/files/{id}")),
    ] {
        let r = app.send(method.clone(), &path, Some(&other), None).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}: {}", r.body);
    }
    assert_eq!(app.send(Method::GET, "/v1/files", Some(&other), None).await.json["data"], json!([]));
    assert_eq!(app.get(&format!("/v1/files/{id}")).await.status, StatusCode::OK, "still there");
    assert_eq!(app.send(Method::GET, "/v1/files/file_nonsense", Some(&other), None).await.status, StatusCode::NOT_FOUND);

    // Delete: gone, the link with it, and the object.
    let deleted = app.api(Method::DELETE, &format!("/v1/files/{id}"), &Value::Null).await;
    assert_eq!((deleted.status, deleted.json["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(app.get(&format!("/v1/files/{id}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.send(Method::GET, path, None, None).await.status, StatusCode::NOT_FOUND);
    app.nothing_stored().await;
});

db_test!(async fn every_client_mistake_is_a_clear_4xx_and_leaves_nothing(db) {
    let app = spawn(db).await;
    let cases: Vec<(Vec<u8>, StatusCode, &str, &str)> = vec![
        (form(&[file("a.png", Some("image/png"), b"%PDF-1.4 not a png")]), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "application/pdf"),
        (form(&[file("a.zip", Some("application/zip"), b"PK\x03\x04zip")]), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "not allowed"),
        (form(&[file("a.txt", Some("text/plain"), b"")]), StatusCode::BAD_REQUEST, "invalid_request", "empty"),
        (form(&[text("purpose", "upload")]), StatusCode::BAD_REQUEST, "invalid_request", "no `file` part"),
        (form(&[text("purpose", "output"), file("a.png", Some("image/png"), &png(100))]), StatusCode::BAD_REQUEST, "invalid_request", "made by executions"),
        (form(&[file("a.png", Some("image/png"), &png(100)), text("purpose", "fine-tune-me")]), StatusCode::BAD_REQUEST, "invalid_request", "unknown purpose"),
        (form(&[file("a.png", Some("image/png"), &png(100)), text("colour", "blue")]), StatusCode::BAD_REQUEST, "invalid_request", "unknown form field"),
        (form(&[file("a.png", Some("image/png"), &png(100)), file("b.png", Some("image/png"), &png(100))]), StatusCode::BAD_REQUEST, "invalid_request", "one file"),
        (b"--wrong-boundary\r\nnot a form at all".to_vec(), StatusCode::BAD_REQUEST, "invalid_request", "malformed"),
        (form(&[file("a.png", Some("image/png"), &png(2 * 1024 * 1024))]), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "exceeds"),
    ];
    for (body, status, code, says) in cases {
        let r = app.upload_with(&app.key.clone(), body).await;
        assert_eq!((r.status, r.code()), (status, code), "{}", r.body);
        assert!(r.message().contains(says), "expected `{says}` in {}", r.body);
        app.nothing_stored().await;
    }
    // A body that is not multipart at all.
    let r = app.post("/v1/files", &json!({ "file": "x" })).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    // A file past the limit within the form's slack: refused as the bytes arrive.
    let body = form(&[file("a.png", Some("image/png"), &png(1024 * 1024 + 10))]);
    let r = app.upload_with(&app.key.clone(), body).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{}", r.body);
    app.nothing_stored().await;
    // A key without the execute scope.
    let project = app.services.identity.projects(&app.org).await.unwrap().remove(0);
    let (_, reader) = app.services.create_key_in(&project.id, "r", &"read".parse().unwrap()).await.unwrap();
    let r = app.upload_with(&reader, form(&[file("a.png", Some("image/png"), &png(100))])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    app.nothing_stored().await;
});

db_test!(async fn an_upload_cut_off_half_way_leaves_no_row_and_no_object(db) {
    let app = TestApp::spawn(db, |s| {
        s.files.max_upload_bytes = 64 * 1024 * 1024;
        s.files.orphan_grace_secs = 0;
    })
    .await;
    let body = form(&[file("big.png", Some("image/png"), &png(40 * 1024 * 1024))]);
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {}\r\n\r\n",
        app.key,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // 20 MiB of 40: past the first parts of a multipart upload to the store.
    socket.write_all(&body[..20 * 1024 * 1024]).await.unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    let mut left = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = app.services.files.sweep_orphans(time::now()).await.unwrap();
        left = on_disk(&app.settings.files.root);
        if left.is_empty() {
            break;
        }
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    app.nothing_stored().await;
});

db_test!(async fn an_uploaded_image_reaches_the_provider_as_its_bytes_never_as_an_id(db) {
    let openai = StandIn::start(Wire::OpenAi).await;
    let mut settings = crate::helpers::test_settings(&db);
    settings.providers.insert("oa".into(), ProviderConfig::OpenaiCompatible(crate::helpers::standin_config(&openai)));
    settings.catalogue.models = vec![ModelConfig {
        slug: "vision/model".into(),
        description: String::new(),
        context_window: 1_000_000,
        routes: vec![crate::helpers::route("v", "oa", "m", "1", "1")],
    }];
    let app = TestApp::start(db, settings).await;
    let data = png(2_000);
    let id = app.upload(&[file("x.png", Some("image/png"), &data)]).await.json["id"].as_str().unwrap().to_owned();
    let notes = app.upload(&[file("notes.txt", Some("text/plain"), b"hello")]).await.json["id"].as_str().unwrap().to_owned();
    let ask = |image: &str| {
        json!({
            "model": "vision/model",
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "what is this?" },
                { "type": "image_url", "image_url": { "url": image } },
            ]}],
        })
    };
    let r = app.chat(ask(&id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let sent = openai.last_body("m").unwrap().to_string();
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    assert!(sent.contains(&format!("data:image/png;base64,{encoded}")), "the provider got: {sent}");
    assert!(!sent.contains(&id) && !sent.contains("orgs/") && !sent.contains("/v1/files"), "{sent}");

    let r = app.chat(ask(&notes)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.message().contains("not an image"), "{}", r.body);
    let other = app.other_key().await;
    let r = app.send(Method::POST, "/v1/chat/completions", Some(&other), Some(ask(&id).to_string())).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.body);
    let r = app.chat(ask("file_nonsense")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(openai.calls("m"), 1, "refused before any provider call");
});

db_test!(async fn file_settings_and_usage_are_the_org_s_own(db) {
    let app = spawn(db).await;
    let defaults = app.get("/v1/files/settings").await;
    assert_eq!(defaults.json["upload_ttl_secs"], 30 * 86_400);
    assert_eq!(defaults.json["upload_ttl_is_default"], true);
    let changed = app.put("/v1/files/settings", &json!({ "upload_ttl_secs": 86_400, "quota_bytes": 1_000_000 })).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!((changed.json["upload_ttl_secs"].as_u64(), changed.json["quota_bytes"].as_u64()), (Some(86_400), Some(1_000_000)));
    let bad = app.put("/v1/files/settings", &json!({ "upload_ttl_secs": 5 })).await;
    assert_eq!((bad.status, bad.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("upload_ttl_secs")));
    let unknown = app.put("/v1/files/settings", &json!({ "ttl": 5 })).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/v1/files/settings").await.json["upload_ttl_secs"], 86_400, "a refused change changes nothing");

    let other = app.other_key().await;
    let theirs = app.send(Method::GET, "/v1/files/settings", Some(&other), None).await;
    assert_eq!(theirs.json["upload_ttl_is_default"], true, "another org keeps the defaults");

    let up = app.upload(&[file("a.png", Some("image/png"), &png(600_000))]).await;
    assert_eq!(up.json["expires_at"].as_i64().unwrap() - up.json["created_at"].as_i64().unwrap(), 86_400);
    let usage = app.get("/v1/files/usage").await;
    assert_eq!((usage.json["bytes"].as_u64(), usage.json["files"].as_u64()), (Some(600_000), Some(1)));
    let over = app.upload(&[file("b.png", Some("image/png"), &png(600_000))]).await;
    assert_eq!((over.status, over.code()), (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"), "{}", over.body);
    assert_eq!(app.send(Method::GET, "/v1/files/usage", Some(&other), None).await.json["files"], 0);
});
