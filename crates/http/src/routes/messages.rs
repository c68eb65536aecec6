//! `POST /v1/messages`, Anthropic-compatible, streaming or not. Errors use
//! Anthropic's shape, including authentication errors.

use std::convert::Infallible;

use actix_web::{HttpRequest, HttpResponse, web};

use super::{answer, event_stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use modelroute_executions::StreamItem;
use modelroute_types::ErrorCode as _;
use serde_json::{Value, json};

use crate::auth::authenticate;
use crate::body::read_json;
use crate::state::State;
use crate::wire_anthropic::{AnthropicError, MessagesRequest, error_type, stop_reason};

pub(crate) async fn create(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AnthropicError> {
    let caller = authenticate(&req).await?;
    let exec_caller = caller.payer()?;
    let body: MessagesRequest = read_json(payload, state.max_body_bytes).await?;
    let stream = body.stream;
    let request = body.into_canonical()?;
    let slug = request.model.clone();
    if !stream {
        let done = state.executor.run(exec_caller, request).await?;
        let r = &done.response;
        return Ok(answer(&done.execution_id).json(json!({
            "id": done.execution_id,
            "type": "message",
            "role": "assistant",
            "model": slug,
            "content": [{ "type": "text", "text": r.content }],
            "stop_reason": stop_reason(r.finish_reason),
            "stop_sequence": null,
            "usage": { "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens },
        })));
    }
    let execution = state.executor.start_stream(exec_caller, request).await?;
    let start = [
        event(
            "message_start",
            &json!({ "type": "message_start", "message": {
            "id": execution.execution_id, "type": "message", "role": "assistant", "model": slug,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 0, "output_tokens": 0 } } }),
        ),
        event(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
    ]
    .concat();
    let frames = futures_util::stream::unfold((execution.events, false), |(mut events, finished)| async move {
        if finished {
            return None;
        }
        let (frame, done) = match events.recv().await? {
            StreamItem::Delta(text) => (
                event(
                    "content_block_delta",
                    &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } }),
                ),
                false,
            ),
            StreamItem::Done { finish_reason, usage, .. } => {
                let frames = [
                    event("content_block_stop", &json!({ "type": "content_block_stop", "index": 0 })),
                    event(
                        "message_delta",
                        &json!({ "type": "message_delta",
                        "delta": { "stop_reason": stop_reason(finish_reason), "stop_sequence": null },
                        "usage": { "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens } }),
                    ),
                    event("message_stop", &json!({ "type": "message_stop" })),
                ];
                (frames.concat(), true)
            }
            StreamItem::Failed(e) => {
                // No message_stop: a truncated answer must not look complete.
                let code = e.code();
                let message = if code.is_public() { e.to_string() } else { "internal error".to_owned() };
                (
                    event(
                        "error",
                        &json!({ "type": "error", "error": { "type": error_type(code), "message": message } }),
                    ),
                    true,
                )
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(frame)), (events, done)))
    });
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(start)) }).chain(frames);
    Ok(event_stream(&execution.execution_id, body))
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}
