//! The stream pump: a streamed execution after admission — routes tried
//! until the first sign of progress, then events passed on as they come;
//! a stream cut off after some output continued on a route of the same
//! model that continues an assistant prefix; settled on the end marker for
//! what each route delivered; charged for what was delivered when the
//! client leaves mid-answer or the answer fails half-way.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::StreamExt as _;
use modelroute_ledger::Ledger;
use modelroute_providers::{
    ChatRequest, ChatStream, FinishReason, Message, Permit, Provider as _, ProviderClient, ProviderError,
    ProviderErrorKind, Role, StreamEvent, Usage, UsageEstimate,
};
use modelroute_routing::Candidate;
use modelroute_types::{ExecutionId, Money};
use tokio::sync::{mpsc, oneshot};

use crate::admission::{AdmitAs, Admitted};
use crate::attempts::{upstream_error, upstream_request};
use crate::executor::{Caller, Executor, StreamItem, ToolCallChunk};
use crate::settlement::cost_of;
use crate::{ExecutionError, ExecutionStatus};

/// What a streamed execution's admission answers: its id, when it was
/// accepted, and the model answering.
pub(crate) type Opened = Result<(ExecutionId, NaiveDateTime, String), ExecutionError>;

/// Opens a stream and waits for its first sign of progress of any kind
/// (text, reasoning, a tool call) within `first_token`; the event is put
/// back in front of the stream.
async fn open_stream(
    provider: Arc<ProviderClient>,
    upstream: ChatRequest,
    first_token: Duration,
) -> Result<ChatStream, ProviderError> {
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
    Ok(Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(stream)))
}

/// The most output tokens, up to `wanted`, whose worst case on `route` with
/// `input` tokens in costs no more than `budget` (0 when not even one does).
fn affordable_output(route: &modelroute_routing::Route, input: u64, wanted: u64, budget: Option<Money>) -> u64 {
    let Some(budget) = budget else { return 0 };
    let fits = |output: u64| route.price_of(input, output).is_some_and(|p| p <= budget);
    if fits(wanted) {
        return wanted;
    }
    // The largest n in [0, wanted) that fits: prices grow with n.
    let (mut low, mut high) = (0_u64, wanted);
    while low + 1 < high {
        let mid = low + (high - low) / 2;
        if fits(mid) { low = mid } else { high = mid }
    }
    if fits(low) { low } else { 0 }
}

/// One route's part of a streamed answer.
struct Leg {
    candidate: Candidate,
    stream: ChatStream,
    _permit: Permit,
    /// The prompt it was sent, and what it produced so far (its bill when
    /// it reports no usage).
    produced: UsageEstimate,
    /// Whether any of its output reached the client.
    delivered: bool,
    /// It continues an earlier leg's answer.
    continued: bool,
    /// Whitespace the client already has that the prefix sent to this leg
    /// left out (a prefix may not end in whitespace): dropped from the
    /// start of its output.
    echo: String,
    malformed: u32,
}

impl Leg {
    fn new(candidate: Candidate, stream: ChatStream, permit: Permit, sent: &ChatRequest) -> Self {
        Self {
            candidate,
            stream,
            _permit: permit,
            produced: UsageEstimate::of(sent),
            delivered: false,
            continued: false,
            echo: String::new(),
            malformed: 0,
        }
    }

    /// `text` without the whitespace the client already has.
    fn without_echo(&mut self, text: String) -> String {
        if self.echo.is_empty() {
            return text;
        }
        let same = text.chars().zip(self.echo.chars()).take_while(|(a, b)| a == b).count();
        let skip: usize = text.chars().take(same).map(char::len_utf8).sum();
        let echoed: usize = self.echo.chars().take(same).map(char::len_utf8).sum();
        if skip == text.len() && echoed < self.echo.len() {
            self.echo.drain(..echoed); // all of it matched: more may follow
        } else {
            self.echo.clear();
        }
        text.get(skip..).unwrap_or_default().to_owned()
    }
}

/// How the stream pump ends.
enum Ended {
    /// The end marker: settle.
    Done { finish_reason: FinishReason },
    /// Failed with this error (the original failure when continuations failed too).
    Failed(ExecutionError),
    /// The client went away.
    ClientLeft,
}

impl<L: Ledger + 'static> Executor<L> {
    /// A stream's task, alive for as long as the stream. Its phases are
    /// boxed: a future is as large as its largest state, and a stream rests
    /// in the pump for its whole life; unboxed, admission's and the route
    /// loop's states made every open stream's task ~7 KB, boxed ~1 KB (deploy/load/streams.sh).
    pub(crate) async fn stream_detached(
        &self,
        caller: Caller,
        request: ChatRequest,
        admitted_tx: oneshot::Sender<Opened>,
        tx: mpsc::Sender<StreamItem>,
    ) {
        let admitted = match Box::pin(self.admit(&caller, &request, AdmitAs::Now { stream: true })).await {
            Ok(a) => a,
            Err(e) => {
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        Box::pin(self.stream_admitted(admitted, &request, admitted_tx, tx)).await;
    }

    /// An admitted stream, from its first route to its settlement. Answers
    /// the execution as it was recorded (the answer's text in it, when kept).
    pub(crate) async fn stream_admitted(
        &self,
        mut admitted: Admitted,
        request: &ChatRequest,
        admitted_tx: oneshot::Sender<Opened>,
        tx: mpsc::Sender<StreamItem>,
    ) {
        // Retry and fall back freely only until the first event: once
        // output has reached the client, only a route that continues it may
        // take over. A route whose first token is late is left for the next.
        let opened = Box::pin(self.call_routes(&mut admitted, request, open_stream)).await;
        if let Err(e) = Box::pin(self.recorded(&mut admitted)).await {
            let _ = admitted_tx.send(Err(e));
            return;
        }
        let (candidate, stream, permit) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                Box::pin(self.fail(&admitted, &e)).await;
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        let model = candidate.route.model.clone();
        if admitted_tx.send(Ok((admitted.id.clone(), admitted.created_at, model))).is_err() {
            // The client left before the first byte: nothing reached it, nothing is charged.
            Box::pin(self.finish_unpaid(&admitted, &ExecutionError::ClientClosed, ExecutionStatus::Canceled)).await;
            return;
        }
        let sent = upstream_request(request, &candidate);
        let mut leg = Leg::new(candidate, stream, permit, &sent);
        // What earlier legs delivered, each billed at its route's prices.
        let mut billed: Vec<(Candidate, Usage)> = Vec::new();
        let mut answer = String::new();
        let ended = Box::pin(self.pump(&mut admitted, request, &mut leg, &mut billed, &mut answer, &tx)).await;
        if admitted.keep_output {
            admitted.output = Some(answer);
        }
        let (finish_reason, status, error) = match ended {
            Ended::Done { finish_reason } => (finish_reason, ExecutionStatus::Succeeded, None),
            Ended::ClientLeft => {
                // The provider did the work so far: the prompt and the
                // output produced, at the built-in tokenizer's count.
                admitted.record_attempt_with(&leg.candidate, None, |a| a.continued = leg.continued);
                billed.push((leg.candidate.clone(), leg.produced.produced()));
                (FinishReason::Stop, ExecutionStatus::Canceled, None)
            }
            Ended::Failed(e) => {
                if billed.is_empty() {
                    // Nothing reached the client: nothing is charged.
                    Box::pin(self.fail(&admitted, &e)).await;
                    let _ = tx.send(StreamItem::Failed(Box::new(e))).await;
                    return;
                }
                (FinishReason::Stop, ExecutionStatus::Failed, Some(e))
            }
        };
        let settled = Box::pin(self.settle(&admitted, &billed, finish_reason, status, error.as_ref())).await;
        let item = match (settled, error) {
            (Ok((cost, usage)), None) => StreamItem::Done { finish_reason, usage, cost },
            // Failed after delivering some output: charged for that, and the client told why.
            (Ok(_), Some(e)) | (Err(e), _) => StreamItem::Failed(Box::new(e)),
        };
        if status != ExecutionStatus::Canceled {
            let _ = tx.send(item).await;
        }
    }

    /// Passes `leg`'s events on until the end marker, a failure that no
    /// route could continue, or the client leaving. Completed and failed
    /// legs are moved into `billed`.
    async fn pump(
        &self,
        admitted: &mut Admitted,
        request: &ChatRequest,
        leg: &mut Leg,
        billed: &mut Vec<(Candidate, Usage)>,
        answer: &mut String,
        tx: &mpsc::Sender<StreamItem>,
    ) -> Ended {
        // The answer's text as the client has it, for a continuation's
        // prefix or the record — kept only when a route could continue it
        // or the record keeps it, so a stream holds no copy of its output otherwise.
        let continuable = admitted.candidates.iter().any(|c| c.route.continues_prefix && c.route.streaming);
        let keep = continuable || admitted.keep_output;
        let mut delivered_text = false;
        // A half-streamed tool call cannot be continued faithfully.
        let mut tool_calls = false;
        // The first failure, reported when no continuation saves the answer.
        let mut original: Option<ExecutionError> = None;
        loop {
            let failure = match leg.stream.next().await {
                Some(Ok(StreamEvent::Delta(d))) => {
                    let d = leg.without_echo(d);
                    if d.is_empty() {
                        continue;
                    }
                    leg.produced.add_output(&d);
                    leg.delivered = true;
                    delivered_text = true;
                    if keep {
                        answer.push_str(&d);
                    }
                    if tx.send(StreamItem::Delta(d)).await.is_err() {
                        return Ended::ClientLeft;
                    }
                    continue;
                }
                Some(Ok(StreamEvent::ToolCallDelta { index, id, name, arguments })) => {
                    leg.produced.add_output(&arguments);
                    leg.delivered = true;
                    tool_calls = true;
                    if tx
                        .send(StreamItem::ToolCallDelta(Box::new(ToolCallChunk { index, id, name, arguments })))
                        .await
                        .is_err()
                    {
                        return Ended::ClientLeft;
                    }
                    continue;
                }
                Some(Ok(StreamEvent::Thinking(t))) => {
                    // Progress the provider bills as output; not part of the answer.
                    leg.produced.add_output(&t);
                    continue;
                }
                Some(Ok(StreamEvent::Malformed)) => {
                    leg.malformed += 1;
                    metrics::counter!("provider_stream_malformed_chunks_total", "provider" => leg.candidate.route.provider.clone())
                        .increment(1);
                    continue;
                }
                Some(Ok(StreamEvent::Done { finish_reason, usage, estimated })) => {
                    self.observe(&leg.candidate, None);
                    let (continued, malformed) = (leg.continued, leg.malformed);
                    admitted.record_attempt_with(&leg.candidate, None, |a| {
                        a.continued = continued;
                        a.usage_estimated = estimated;
                        a.malformed_chunks = malformed;
                    });
                    billed.push((leg.candidate.clone(), usage));
                    return Ended::Done { finish_reason };
                }
                Some(Err(e)) => e,
                // Ended without a finish reason: a truncated answer is never a success.
                None => {
                    ProviderError::new(ProviderErrorKind::StreamCut, "the upstream stream ended before it was complete")
                }
            };
            let class =
                self.observe(&leg.candidate, Some(&failure)).unwrap_or_else(|| self.classify(&leg.candidate, &failure));
            let delivered = leg.delivered.then(|| leg.produced.produced());
            let (continued, malformed) = (leg.continued, leg.malformed);
            admitted.record_attempt_with(&leg.candidate, Some(class.canonical), |a| {
                a.continued = continued;
                a.billed = delivered;
                a.malformed_chunks = malformed;
            });
            if let Some(usage) = delivered {
                billed.push((leg.candidate.clone(), usage));
            }
            let error = original.take().unwrap_or_else(|| upstream_error(class, &failure));
            if !continuable || !delivered_text || tool_calls {
                return Ended::Failed(error);
            }
            match self.continuation(admitted, request, &leg.candidate, answer, billed).await {
                Some(next) => {
                    *leg = next;
                    original = Some(error);
                }
                None => return Ended::Failed(error),
            }
        }
    }

    /// A route that continues `answer` after `after` was cut off: the next
    /// candidate of the same model that continues an assistant prefix,
    /// whose worst case on top of what was delivered fits the hold, opened
    /// within the deadline. `None` when there is none or it failed (its
    /// failure recorded; the original failure is what the client is told).
    async fn continuation(
        &self,
        admitted: &mut Admitted,
        request: &ChatRequest,
        after: &Candidate,
        answer: &str,
        billed: &[(Candidate, Usage)],
    ) -> Option<Leg> {
        let spent = cost_of(billed)?;
        let delivered_tokens = billed.iter().map(|(_, u)| u.output_tokens).sum::<u64>();
        let prefix = answer.trim_end();
        let echo = answer.get(prefix.len()..).unwrap_or_default().to_owned();
        let position = admitted.candidates.iter().position(|c| c.route.id == after.route.id)?;
        let later: Vec<Candidate> = admitted.candidates.iter().skip(position + 1).cloned().collect();
        for candidate in later {
            let route = &candidate.route;
            if route.model != after.route.model || !route.continues_prefix || !route.streaming {
                continue;
            }
            if tokio::time::Instant::now() >= admitted.deadline {
                return None;
            }
            let remaining = u64::from(candidate.max_output_tokens).saturating_sub(delivered_tokens);
            if remaining == 0 {
                return None;
            }
            let mut sent = upstream_request(request, &candidate);
            sent.messages.push(Message::text(Role::Assistant, prefix));
            // The continuation's worst case on top of what was spent stays
            // within the hold: its output cap is lowered to what the hold
            // has left (it then ends with `length`, as any capped answer).
            let input = UsageEstimate::of(&sent).produced().input_tokens;
            let affordable = affordable_output(route, input, remaining, admitted.hold.amount.checked_sub(spent));
            if affordable == 0 {
                admitted.record_skip(&candidate, "over_hold");
                continue;
            }
            sent.max_tokens = u32::try_from(affordable).ok();
            let Some(provider) = admitted.providers.get(&route.provider) else { continue };
            let Some(permit) = self.enter(admitted, &candidate) else { continue };
            let first_token = self.first_token_limit(&candidate);
            let opened = tokio::time::timeout_at(admitted.deadline, open_stream(provider, sent.clone(), first_token))
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::new(ProviderErrorKind::Timeout, "the request's deadline passed"))
                });
            match opened {
                Ok(stream) => {
                    tracing::info!(execution_id = %admitted.id, from = %after.route.id, to = %route.id, "continuing a cut stream");
                    let mut leg = Leg::new(candidate, stream, permit, &sent);
                    leg.continued = true;
                    leg.echo = echo;
                    return Some(leg);
                }
                Err(e) => {
                    let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                    admitted.record_attempt_with(&candidate, Some(class.canonical), |a| a.continued = true);
                    tracing::warn!(
                        execution_id = %admitted.id, route = %route.id, status = ?e.status, upstream = ?e.upstream_message,
                        "continuing a cut stream failed"
                    );
                }
            }
        }
        None
    }
}
