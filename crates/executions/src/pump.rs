//! The stream pump: a streamed execution after admission — routes tried
//! until the first event, then events passed on as they come, settled on
//! the end marker, released on a failure, charged for what was produced
//! when the client leaves mid-answer.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::StreamExt as _;
use modelroute_ledger::Ledger;
use modelroute_providers::{
    ChatRequest, FinishReason, Provider as _, ProviderClient, ProviderError, ProviderErrorKind, StreamEvent,
    UsageEstimate,
};
use modelroute_types::ExecutionId;
use tokio::sync::{mpsc, oneshot};

use crate::attempts::upstream_error;
use crate::executor::{Caller, Executor, StreamItem};
use crate::{ExecutionError, ExecutionStatus};

impl<L: Ledger + 'static> Executor<L> {
    pub(crate) async fn stream_detached(
        &self,
        caller: Caller,
        request: ChatRequest,
        admitted_tx: oneshot::Sender<Result<(ExecutionId, NaiveDateTime), ExecutionError>>,
        tx: mpsc::Sender<StreamItem>,
    ) {
        let mut admitted = match self.admit(&caller, &request, true).await {
            Ok(a) => a,
            Err(e) => {
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        // Retry and fall back only until the first event: once output has
        // reached the client, a second route cannot take over. A route
        // whose first token is late is left for the next one.
        let opened = self
            .call_routes(
                &mut admitted,
                &request,
                async |provider: Arc<ProviderClient>, upstream: ChatRequest, first_token: Duration| {
                    let mut stream = provider.chat_stream(&upstream).await?;
                    let first = match tokio::time::timeout(first_token, stream.next()).await {
                        Err(_) => {
                            return Err(ProviderError::new(
                                ProviderErrorKind::FirstTokenTimeout,
                                "the upstream provider sent no first token in time",
                            ));
                        }
                        Ok(None) => {
                            return Err(ProviderError::new(
                                ProviderErrorKind::StreamCut,
                                "the upstream stream ended before its first event",
                            ));
                        }
                        Ok(Some(first)) => first?,
                    };
                    Ok(futures_util::stream::once(async move { Ok(first) }).chain(stream))
                },
            )
            .await;
        if let Err(e) = self.recorded(&mut admitted).await {
            let _ = admitted_tx.send(Err(e));
            return;
        }
        let (candidate, stream, _permit) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.fail(&admitted, &e).await;
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        if admitted_tx.send(Ok((admitted.id.clone(), admitted.created_at))).is_err() {
            // The client left before the first byte: nothing reached it, nothing is charged.
            self.finish_unpaid(&admitted, &ExecutionError::ClientClosed, ExecutionStatus::Canceled).await;
            return;
        }
        let mut stream = std::pin::pin!(stream);
        let mut produced = UsageEstimate::of(&request);
        loop {
            let item = match stream.next().await {
                Some(Ok(StreamEvent::Delta(d))) => {
                    produced.add_output(&d);
                    StreamItem::Delta(d)
                }
                Some(Ok(StreamEvent::ToolCallDelta { index, id, name, arguments })) => {
                    produced.add_output(&arguments);
                    StreamItem::ToolCallDelta { index, id, name, arguments }
                }
                Some(Ok(StreamEvent::Done { finish_reason, usage })) => {
                    self.observe(&candidate, None);
                    admitted.record_attempt(&candidate, None);
                    let item = match self
                        .settle(&admitted, &candidate, usage, finish_reason, ExecutionStatus::Succeeded)
                        .await
                    {
                        Ok(cost) => StreamItem::Done { finish_reason, usage, cost },
                        Err(e) => StreamItem::Failed(e),
                    };
                    let _ = tx.send(item).await;
                    return;
                }
                Some(Err(e)) => {
                    let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                    admitted.record_attempt(&candidate, Some(class.canonical));
                    let e = upstream_error(class, &e);
                    self.fail(&admitted, &e).await;
                    let _ = tx.send(StreamItem::Failed(e)).await;
                    return;
                }
                None => {
                    // Ended without its end marker: a truncated answer is
                    // never a success.
                    let cut = ProviderError::new(
                        ProviderErrorKind::StreamCut,
                        "the upstream stream ended before it was complete",
                    );
                    let class = self.observe(&candidate, Some(&cut)).unwrap_or_else(|| self.classify(&candidate, &cut));
                    admitted.record_attempt(&candidate, Some(class.canonical));
                    let e = upstream_error(class, &cut);
                    self.fail(&admitted, &e).await;
                    let _ = tx.send(StreamItem::Failed(e)).await;
                    return;
                }
            };
            if tx.send(item).await.is_err() {
                // The client went away mid-answer. The provider did the work
                // so far: charge the prompt and the output produced, at the
                // built-in tokenizer's estimate.
                admitted.record_attempt(&candidate, None);
                let _ = self
                    .settle(&admitted, &candidate, produced.produced(), FinishReason::Stop, ExecutionStatus::Canceled)
                    .await;
                return;
            }
        }
    }
}
