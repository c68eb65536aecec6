//! Re-hosting providers' outputs against a local stand-in: an image, a huge
//! body, a server that never answers, a redirect to a host the route does
//! not allow, and content that is not what its type says. Only the image
//! becomes a file; no failure leaves a row or an object, and no error
//! carries the provider's URL.

use std::time::{Duration, Instant};

use modelroute_db::db_test;
use modelroute_files::{FileError, ListQuery, Purpose, Rehost};
use modelroute_types::ExecutionId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::fixture::{Store, fixture, objects, org, png, sha256_hex};

/// A provider's file host: answers by path.
async fn stand_in() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let head =
                    |status: &str, headers: &str| format!("HTTP/1.1 {status}\r\n{headers}connection: close\r\n\r\n");
                match path.as_str() {
                    "/image.png" => {
                        let data = png(300_000);
                        let h =
                            head("200 OK", &format!("content-type: image/png\r\ncontent-length: {}\r\n", data.len()));
                        let _ = socket.write_all(h.as_bytes()).await;
                        let _ = socket.write_all(&data).await;
                    }
                    "/huge-declared" => {
                        let h = head("200 OK", "content-type: image/png\r\ncontent-length: 10000000000\r\n");
                        let _ = socket.write_all(h.as_bytes()).await;
                    }
                    "/huge-chunked" => {
                        // No length: the cap must be found while reading.
                        let _ = socket.write_all(head("200 OK", "content-type: image/png\r\n").as_bytes()).await;
                        let chunk = png(64 * 1024);
                        for _ in 0..1000 {
                            if socket.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                    "/never" => tokio::time::sleep(Duration::from_secs(3600)).await,
                    "/elsewhere" => {
                        let h =
                            head("302 Found", "location: http://evil.example.net/image.png\r\ncontent-length: 0\r\n");
                        let _ = socket.write_all(h.as_bytes()).await;
                    }
                    "/moved" => {
                        let h = head("302 Found", "location: /image.png\r\ncontent-length: 0\r\n");
                        let _ = socket.write_all(h.as_bytes()).await;
                    }
                    "/pdf-as-png" => {
                        let data = b"%PDF-1.7 not an image";
                        let h =
                            head("200 OK", &format!("content-type: image/png\r\ncontent-length: {}\r\n", data.len()));
                        let _ = socket.write_all(h.as_bytes()).await;
                        let _ = socket.write_all(data).await;
                    }
                    _ => {
                        let _ = socket.write_all(head("404 Not Found", "content-length: 0\r\n").as_bytes()).await;
                    }
                }
            });
        }
    });
    (format!("127.0.0.1:{}", addr.port()), task)
}

db_test!(async fn outputs_are_rehosted_only_from_allowed_hosts_within_limits(db) {
    let f = fixture(db, Store::Local, |c| {
        c.rehost.allow_http = true;
        c.rehost.max_bytes = 1024 * 1024;
        c.rehost.timeout_secs = 2;
    })
    .await;
    let (host, _server) = stand_in().await;
    let a = org(f.db.pool()).await;
    let target = Rehost { org: a.clone(), project: None, execution: ExecutionId::new(), allowed_hosts: vec![host.clone()] };

    let file = f.files.rehost(&target, &format!("http://{host}/image.png")).await.unwrap();
    assert_eq!((file.purpose, file.size_bytes), (Purpose::Output, 300_000));
    assert_eq!(file.execution_id.as_ref(), Some(&target.execution));
    assert_eq!(file.content_type, "image/png");
    assert_eq!(file.filename, "output.png", "the provider's path is not kept");
    assert_eq!(file.sha256, sha256_hex(&png(300_000)));
    let ttl = chrono::Duration::seconds(i64::try_from(f.config.output_ttl_secs).unwrap());
    assert_eq!(file.expires_at, Some(file.created_at + ttl));
    let moved = f.files.rehost(&target, &format!("http://{host}/moved")).await.unwrap();
    assert_eq!(moved.size_bytes, 300_000, "a redirect within the allowed host is followed");

    let failures = [
        ("/huge-declared", "larger than"),
        ("/huge-chunked", "larger than"),
        ("/never", "did not arrive within"),
        ("/elsewhere", "does not allow"),
        ("/pdf-as-png", "application/pdf"),
        ("/missing", "answered 404"),
    ];
    for (path, expected) in failures {
        let url = format!("http://{host}{path}");
        let started = Instant::now();
        let e = f.files.rehost(&target, &url).await.unwrap_err();
        assert!(matches!(&e, FileError::Rehost(m) if m.contains(expected)), "{path}: {e}");
        assert!(!e.to_string().contains(&host) && !e.to_string().contains(path), "{path}: the error names the URL: {e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path} took {:?}", started.elapsed());
    }
    let not_allowed = Rehost { allowed_hosts: vec!["cdn.example.com".into()], ..target.clone() };
    let e = f.files.rehost(&not_allowed, &format!("http://{host}/image.png")).await.unwrap_err();
    assert!(matches!(&e, FileError::Rehost(m) if m.contains("does not allow")), "{e}");
    let e = f.files.rehost(&target, &format!("ftp://{host}/image.png")).await.unwrap_err();
    assert!(matches!(&e, FileError::Rehost(_)), "{e}");

    let listed = f.files.list(&a, &ListQuery::default()).await.unwrap().data;
    assert_eq!(listed.len(), 2, "only the two successes are files");
    assert_eq!(objects(&f.files).await.len(), 2);
});

db_test!(async fn plain_http_is_refused_unless_allowed(db) {
    let f = fixture(db, Store::Local, |_| {}).await;
    let (host, _server) = stand_in().await;
    let a = org(f.db.pool()).await;
    let target = Rehost { org: a, project: None, execution: ExecutionId::new(), allowed_hosts: vec![host.clone()] };
    let e = f.files.rehost(&target, &format!("http://{host}/image.png")).await.unwrap_err();
    assert!(matches!(&e, FileError::Rehost(m) if m.contains("not https")), "{e}");
});
