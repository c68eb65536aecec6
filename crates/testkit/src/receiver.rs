//! A webhook receiver on 127.0.0.1 that records what it gets and answers by
//! path: `/ok` 200, `/fail3` 500 three times then 200, `/gone` 410,
//! `/redirect` 302 to `/ok`, `/hang` never (each answer closes its
//! connection, so a client never reuses one the receiver shut); and the Standard Webhooks
//! reference verifier (`standardwebhooks` on PyPI) to check what it got.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    headers: HashMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value ("" when absent).
    #[must_use]
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).cloned().unwrap_or_default()
    }
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<(String, Request)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Request)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((path, Request { headers, body }))
}

impl Receiver {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<(String, Request)>>> = Arc::default();
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Some((path, request)) = read_request(&mut socket).await else { return };
                    let count = {
                        let mut seen = log.lock().unwrap();
                        seen.push((path.clone(), request));
                        seen.iter().filter(|(p, _)| *p == path).count()
                    };
                    let answer = match path.as_str() {
                        "/fail3" if count <= 3 => {
                            "HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\ncontent-length: 4\r\n\r\noops"
                                .to_owned()
                        }
                        "/ok" | "/fail3" => {
                            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_owned()
                        }
                        "/gone" => "HTTP/1.1 410 Gone\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_owned(),
                        "/redirect" => {
                            "HTTP/1.1 302 Found\r\nconnection: close\r\nlocation: /ok\r\ncontent-length: 0\r\n\r\n"
                                .to_owned()
                        }
                        "/hang" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        _ => "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_owned(),
                    };
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { port, seen, task }
    }

    /// Its URL for `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What it got on `path`, in order.
    #[must_use]
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, r)| r.clone()).collect()
    }
}

/// Checks a received request with the Standard Webhooks reference library
/// (`standardwebhooks` on PyPI): it verifies, and a changed body does not.
pub async fn reference_verify(secret: &str, request: &Request) {
    let (secret, request) = (secret.to_owned(), request.clone());
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let python = crate::python::python_with("standardwebhooks", "standardwebhooks>=1.0.0,<2");
        let script = r#"
import json, sys
from standardwebhooks import Webhook
secret, headers = sys.argv[1], json.loads(sys.argv[2])
body = sys.stdin.buffer.read()
Webhook(secret).verify(body, headers)
print("verified")
"#;
        let headers = serde_json::json!({
            "webhook-id": request.header("webhook-id"),
            "webhook-timestamp": request.header("webhook-timestamp"),
            "webhook-signature": request.header("webhook-signature"),
        });
        let run = |body: &[u8]| {
            let mut child = std::process::Command::new(&python)
                .args(["-c", script, &secret, &headers.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(body).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = run(&request.body);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
            "the reference verifier refused it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut changed = request.body.clone();
        changed.push(b' ');
        assert!(!run(&changed).status.success(), "the reference verifier accepted a changed body");
    })
    .await
    .unwrap();
}
