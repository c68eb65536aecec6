//! `POST /v1/chat/completions`, OpenAI-compatible, streaming or not.

use std::convert::Infallible;

use actix_web::HttpResponse;

use super::{answer, event_stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use modelroute_executions::{StreamItem, ToolCallChunk};
use modelroute_types::time;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::state::State;
use crate::wire::{ChatCompletionRequest, assistant_message, usage};

pub(crate) async fn completions(state: State, caller: Caller, payload: Body) -> Result<HttpResponse, ApiError> {
    caller.require(modelroute_identity::Scope::Execute)?;
    let mut body: ChatCompletionRequest = payload.json().await?;
    let exec_caller = caller.payer(body.routing, std::mem::take(&mut body.models))?;
    let stream = body.stream.unwrap_or(false);
    let include_usage = body.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let mut request = body.into_canonical()?;
    state.services.inline_files(&exec_caller.org_id, &mut request).await?;
    if !stream {
        let done = state.services.executor.run(exec_caller, request).await?;
        let r = &done.response;
        return Ok(answer(&done.execution_id).json(json!({
            "id": done.execution_id,
            "object": "chat.completion",
            "created": time::unix_seconds(done.created_at),
            "model": done.model,
            "choices": [{
                "index": 0,
                "message": assistant_message(r),
                "logprobs": null,
                "finish_reason": r.finish_reason.as_str(),
            }],
            "usage": usage(r.usage.input_tokens, r.usage.output_tokens),
            "system_fingerprint": null,
        })));
    }
    let execution = state.services.executor.start_stream(exec_caller, request).await?;
    let id = execution.execution_id.to_string();
    let created = time::unix_seconds(execution.created_at);
    let model = execution.model;
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let first = sse(&chunk(json!({ "role": "assistant", "content": "" }), None));
    // Unfold the execution's events into SSE frames; `None` ends the body.
    let state0 = (execution.events, chunk, false);
    let frames = futures_util::stream::unfold(state0, move |(mut events, chunk, finished)| async move {
        if finished {
            return None;
        }
        let frame = match events.recv().await? {
            StreamItem::Delta(text) => sse(&chunk(json!({ "content": text }), None)),
            StreamItem::ToolCallDelta(c) => {
                let ToolCallChunk { index, id, name, arguments } = *c;
                let mut call = json!({ "index": index, "function": { "arguments": arguments } });
                if let (Some(obj), Some(id)) = (call.as_object_mut(), id) {
                    obj.insert("id".into(), json!(id));
                    obj.insert("type".into(), json!("function"));
                }
                if let (Some(f), Some(name)) = (call.get_mut("function").and_then(Value::as_object_mut), name) {
                    f.insert("name".into(), json!(name));
                }
                sse(&chunk(json!({ "tool_calls": [call] }), None))
            }
            StreamItem::Done { finish_reason, usage: u, .. } => {
                let mut out = sse(&chunk(json!({}), Some(finish_reason.as_str()))).to_vec();
                if include_usage {
                    // The usage chunk has no choices, as OpenAI sends it.
                    let mut v = chunk(json!({}), None);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("choices".into(), json!([]));
                        obj.insert("usage".into(), usage(u.input_tokens, u.output_tokens));
                    }
                    out.extend_from_slice(&sse(&v));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                return Some((Ok::<_, Infallible>(Bytes::from(out)), (events, chunk, true)));
            }
            StreamItem::Failed(e) => {
                // No [DONE]: a truncated answer must not look complete. The
                // frame is the error body every answer carries (the one table, redacted alike).
                let frame = sse(&ApiError::from(*e).body());
                return Some((Ok(frame), (events, chunk, true)));
            }
        };
        Some((Ok(frame), (events, chunk, false)))
    });
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(first) }).chain(frames);
    Ok(event_stream(&execution.execution_id, body))
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}
