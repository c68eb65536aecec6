//! The load harness's servers do what `deploy/load/paid-path.sh` relies on:
//! the upstream answers a chat completion (and a stream) with usage, and the
//! proxy passes a request with the right key through and refuses the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(args: &[&str], port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_modelroute-loadkit"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the harness binary starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{args:?} does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// One HTTP/1.1 request; the status and the body.
fn post(port: u16, key: Option<&str>, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn the_upstream_answers_and_the_proxy_passes_only_its_key() {
    let up = free_port();
    let _upstream = start(&["upstream", "--bind", &format!("127.0.0.1:{up}"), "--chunks", "3"], up);
    let ask = r#"{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

    let (status, body) = post(up, None, ask);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["choices"][0]["message"]["content"].as_str(), v["usage"]["completion_tokens"].as_u64()),
        (Some("word word word"), Some(3))
    );

    let (status, body) = post(up, None, &ask.replace(r#""model":"m""#, r#""model":"m","stream":true"#));
    assert_eq!(status, 200);
    assert_eq!(body.matches("data: ").count(), 3 + 2, "three chunks, the finish with usage, [DONE]: {body}");
    assert!(
        body.contains(r#""finish_reason":"stop""#)
            && body.contains(r#""completion_tokens":3"#)
            && body.contains("[DONE]"),
        "{body}"
    );

    let px = free_port();
    let upstream = format!("http://127.0.0.1:{up}/v1");
    let _proxy = start(
        &["proxy", "--bind", &format!("127.0.0.1:{px}"), "--upstream", &upstream, "--key", "k1", "--workers", "1"],
        px,
    );
    let (status, body) = post(px, Some("k1"), ask);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["usage"]["total_tokens"], 15);
    assert_eq!(post(px, Some("k2"), ask).0, 401, "another key");
    assert_eq!(post(px, None, ask).0, 401, "no key");
    assert_eq!(post(px, Some("k1"), "{not json").0, 400);
}
