//! `POST /v1/messages`, Anthropic-compatible, streaming or not. Errors use
//! Anthropic's shape, including authentication errors.

use std::convert::Infallible;

use actix_web::{HttpRequest, HttpResponse};

use super::{answer, event_stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use modelroute_executions::{StreamItem, ToolCallChunk};
use serde_json::{Value, json};

use crate::auth::authenticate;
use crate::body::Body;
use crate::state::State;
use crate::wire_anthropic::{AnthropicError, MessagesRequest, content_blocks};
use modelroute_providers::anthropic::stop_reason;

pub(crate) async fn create(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, AnthropicError> {
    let caller = authenticate(&req).await?;
    caller.require(modelroute_identity::Scope::Execute)?;
    let mut body: MessagesRequest = payload.json().await?;
    let exec_caller = caller.payer(body.routing, std::mem::take(&mut body.models))?;
    let stream = body.stream;
    let mut request = body.into_canonical()?;
    state.services.inline_files(&exec_caller.org_id, &mut request).await.map_err(crate::ApiError::from)?;
    if !stream {
        let done = state.services.executor.run(exec_caller, request).await?;
        let r = &done.response;
        return Ok(answer(&done.execution_id).json(json!({
            "id": done.execution_id,
            "type": "message",
            "role": "assistant",
            "model": done.model,
            "content": content_blocks(r),
            "stop_reason": stop_reason(r.finish_reason),
            "stop_sequence": null,
            "usage": { "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens },
        })));
    }
    let execution = state.services.executor.start_stream(exec_caller, request).await?;
    let start = event(
        "message_start",
        &json!({ "type": "message_start", "message": {
        "id": execution.execution_id, "type": "message", "role": "assistant", "model": execution.model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": 0, "output_tokens": 0 } } }),
    );
    let blocks = Blocks { next: 0, open: None };
    let frames = futures_util::stream::unfold(
        (execution.events, blocks, false),
        |(mut events, mut blocks, finished)| async move {
            if finished {
                return None;
            }
            let mut out = Vec::new();
            let done = match events.recv().await? {
                StreamItem::Delta(text) => {
                    let index = blocks.enter(Open::Text, &mut out, || json!({ "type": "text", "text": "" }));
                    out.extend(event(
                    "content_block_delta",
                    &json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } }),
                ));
                    false
                }
                StreamItem::ToolCallDelta(c) => {
                    let ToolCallChunk { index: call, id, name, arguments } = *c;
                    let index = blocks.enter(Open::Tool(call), &mut out, || {
                    json!({ "type": "tool_use", "id": id.unwrap_or_default(), "name": name.unwrap_or_default(), "input": {} })
                });
                    if !arguments.is_empty() {
                        out.extend(event(
                            "content_block_delta",
                            &json!({ "type": "content_block_delta", "index": index,
                                 "delta": { "type": "input_json_delta", "partial_json": arguments } }),
                        ));
                    }
                    false
                }
                StreamItem::Done { finish_reason, usage, .. } => {
                    if blocks.open.is_none() && blocks.next == 0 {
                        blocks.enter(Open::Text, &mut out, || json!({ "type": "text", "text": "" }));
                    }
                    blocks.close(&mut out);
                    out.extend(event(
                        "message_delta",
                        &json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop_reason(finish_reason), "stop_sequence": null },
                    "usage": { "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens } }),
                    ));
                    out.extend(event("message_stop", &json!({ "type": "message_stop" })));
                    true
                }
                StreamItem::Failed(e) => {
                    // No message_stop: a truncated answer must not look complete.
                    out.extend(event("error", &AnthropicError::from(*e).body()));
                    true
                }
            };
            Some((Ok::<_, Infallible>(Bytes::from(out)), (events, blocks, done)))
        },
    );
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(start)) }).chain(frames);
    Ok(event_stream(&execution.execution_id, body))
}

/// What the open content block holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Tool(u32),
}

/// The content blocks of a streamed message: one is open at a time.
struct Blocks {
    next: usize,
    open: Option<(usize, Open)>,
}

impl Blocks {
    /// The index of the block for `what`, opening it (and closing the
    /// previous one) when it is not the open one.
    fn enter(&mut self, what: Open, out: &mut Vec<u8>, start: impl FnOnce() -> Value) -> usize {
        if let Some((index, open)) = self.open
            && open == what
        {
            return index;
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((index, what));
        out.extend(event(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": start() }),
        ));
        index
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            out.extend(event("content_block_stop", &json!({ "type": "content_block_stop", "index": index })));
        }
    }
}

fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}
