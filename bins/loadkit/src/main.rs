//! The load harness's servers (`deploy/load/paid-path.sh` starts them):
//!
//! - `upstream`: an OpenAI-compatible chat-completions server that answers
//!   at once (or, for streams, a chunk every `--chunk-delay-ms`), so that
//!   what a load test measures is the gateway in front of it;
//! - `proxy`: the floor a paid request is compared with — actix-web in,
//!   hyper out, the JSON parsed and re-serialised both ways, a bearer token
//!   checked — and nothing else: no ledger, no records, no routing.

// A command-line tool: saying where it listens on stdout is its interface.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "The load harness's upstream and bare proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An OpenAI-compatible upstream that answers at once.
    Upstream {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:18101")]
        bind: SocketAddr,
        /// Chunks of a streamed answer.
        #[arg(long, default_value_t = 8)]
        chunks: usize,
        /// Time between a streamed answer's chunks.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
    /// The bare proxy: bearer check, JSON both ways, nothing else.
    Proxy {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:18102")]
        bind: SocketAddr,
        /// The upstream's base URL (`…/v1`).
        #[arg(long, default_value = "http://127.0.0.1:18101/v1")]
        upstream: String,
        /// The bearer token clients must present.
        #[arg(long, env = "LOADKIT_KEY")]
        key: String,
        /// actix workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Upstream { bind, chunks, chunk_delay_ms } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(upstream(bind, chunks, Duration::from_millis(chunk_delay_ms)))
        }
        Command::Proxy { bind, upstream, key, workers } => {
            actix_web::rt::System::new().block_on(proxy(bind, upstream, key, workers))
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn upstream(bind: SocketAddr, chunks: usize, delay: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
    println!("upstream listening on {bind}");
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, chunks, delay));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// A chat completion (or its stream) for any request, its usage included.
async fn answer(req: Request<Incoming>, chunks: usize, delay: Duration) -> Result<Response<Body>, Infallible> {
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let Ok(ask) = serde_json::from_slice::<Value>(&body) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "not JSON"));
    };
    let model = ask.get("model").and_then(Value::as_str).unwrap_or("mock").to_owned();
    let usage = json!({ "prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks });
    if ask.get("stream").and_then(Value::as_bool) != Some(true) {
        let words = vec!["word"; chunks].join(" ");
        let body = json!({
            "id": "chatcmpl-load", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": words }, "finish_reason": "stop" }],
            "usage": usage,
        });
        let res = Response::builder().header("content-type", "application/json").body(full(body.to_string()));
        return Ok(res.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")));
    }
    let frame = move |i: usize| -> String {
        let chunk = if i < chunks {
            json!({ "id": "chatcmpl-load", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{ "index": 0, "delta": { "content": "word " }, "finish_reason": null }] })
        } else {
            json!({ "id": "chatcmpl-load", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }], "usage": usage })
        };
        format!("data: {chunk}\n\n")
    };
    let frames = futures_util::stream::unfold(0_usize, move |i| {
        let frame = frame.clone();
        async move {
            if i > chunks + 1 {
                return None;
            }
            if i > 0 && i <= chunks && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let text = if i == chunks + 1 { "data: [DONE]\n\n".to_owned() } else { frame(i) };
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), i + 1))
        }
    });
    let res = Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(frames).boxed());
    Ok(res.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")))
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut res = Response::new(full(text.to_owned()));
    *res.status_mut() = status;
    res
}

/// What each proxy worker holds.
struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    bearer: String,
}

async fn proxy(bind: SocketAddr, upstream: String, key: String, workers: usize) -> Result<()> {
    let url = format!("{}/chat/completions", upstream.trim_end_matches('/'));
    let bearer = format!("Bearer {key}");
    println!("proxy listening on {bind}");
    HttpServer::new(move || {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        App::new()
            .app_data(web::Data::new(Proxy { client, url: url.clone(), bearer: bearer.clone() }))
            .route("/v1/chat/completions", web::post().to(chat))
    })
    .workers(workers)
    .bind(bind)?
    .run()
    .await?;
    Ok(())
}

async fn chat(req: HttpRequest, body: Bytes, proxy: web::Data<Proxy>) -> HttpResponse {
    let authorized = req.headers().get("authorization").is_some_and(|v| v.as_bytes() == proxy.bearer.as_bytes());
    if !authorized {
        return HttpResponse::Unauthorized().json(json!({ "error": { "message": "bad key" } }));
    }
    let Ok(ask) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().json(json!({ "error": { "message": "not JSON" } }));
    };
    let Ok(out) = serde_json::to_vec(&ask) else { return HttpResponse::InternalServerError().finish() };
    let Ok(call) = Request::post(&proxy.url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer upstream-key")
        .body(Full::new(Bytes::from(out)))
    else {
        return HttpResponse::InternalServerError().finish();
    };
    let Ok(res) = proxy.client.request(call).await else { return HttpResponse::BadGateway().finish() };
    let status = res.status().as_u16();
    let Ok(bytes) = res.into_body().collect().await.map(|b| b.to_bytes()) else {
        return HttpResponse::BadGateway().finish();
    };
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else { return HttpResponse::BadGateway().finish() };
    let status = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    HttpResponse::build(status).json(answer)
}
