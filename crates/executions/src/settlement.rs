//! Settlement and the record: the hold settled at the route's prices for
//! the provider's counts (or charged afterwards when it lapsed), or released
//! for an unpaid end; the execution record updated with the outcome.

use modelroute_ledger::{HoldRequest, HoldStatus, Ledger, LedgerError, Resolution, SettledWithin};
use modelroute_providers::{FinishReason, Usage};
use modelroute_routing::Candidate;
use modelroute_types::{ErrorCode as _, Money, failpoint, time};

use crate::admission::Admitted;
use crate::executor::Executor;
use crate::store::{self, Outcome, Write, Written};
use crate::{ExecutionError, ExecutionStatus};

/// What `legs` cost, each at its own route's prices (`Route::price_of`, the
/// formula of the hold's worst case); `None` on overflow.
pub(crate) fn cost_of(legs: &[(Candidate, Usage)]) -> Option<Money> {
    legs.iter().try_fold(Money::ZERO, |sum, (c, u)| {
        c.route.price_of(u.input_tokens, u.output_tokens).and_then(|p| sum.checked_add(p))
    })
}

impl<L: Ledger + 'static> Executor<L> {
    /// Settles the hold for what each route delivered (`legs`: one, or a
    /// cut stream and the routes that continued it, in order), each at its
    /// own prices, and records the outcome — with `error` when it failed
    /// after delivering something. Returns the charge and the usage summed.
    pub(crate) async fn settle(
        &self,
        admitted: &Admitted,
        legs: &[(Candidate, Usage)],
        finish_reason: FinishReason,
        status: ExecutionStatus,
        error: Option<&ExecutionError>,
    ) -> Result<(Money, Usage), ExecutionError> {
        let Some((served_by, _)) = legs.last() else { return Err(ExecutionError::TaskFailed) };
        let route = &served_by.route;
        // The same formula as the hold's worst case, on the provider's counts.
        let cost = cost_of(legs).unwrap_or(admitted.hold.amount);
        let usage = legs.iter().fold(Usage::default(), |sum, (_, u)| Usage {
            input_tokens: sum.input_tokens.saturating_add(u.input_tokens),
            output_tokens: sum.output_tokens.saturating_add(u.output_tokens),
        });
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        // The record's outcome; the charge and the settlement's entry come
        // from the settlement (`None`: left to `Write::Settle` to fill in).
        let outcome = |settled: Option<&Resolution>| Outcome {
            status: Some(status.as_str()),
            cost: settled.map(|r| r.charged.units()),
            input_tokens: Some(to_i64(usage.input_tokens)),
            output_tokens: Some(to_i64(usage.output_tokens)),
            finish_reason: Some(finish_reason.as_str()),
            finished_at: Some(time::now()),
            route_id: Some(route.public_id.clone()),
            decision: admitted.decision_json(),
            input_price: Some(route.input_price.per_million().units()),
            output_price: Some(route.output_price.per_million().units()),
            price_version: Some(admitted.price_version.clone()),
            request_price: Some(route.request_price.units()),
            settlement_entry_id: settled.map(|r| r.entry_id.to_string()),
            model: Some(route.model.clone()),
            error_code: error.map(|e| e.code().as_str()),
            error_message: error.map(ToString::to_string),
        };
        let id = admitted.id.to_string();
        // On SQLite the settlement and the outcome are one commit of the
        // shared writer: one round trip, and the record can never say other
        // than the ledger.
        if self.inner.ledger.settles_within_writer() && self.inner.pool.writer()?.is_some() {
            let both = Write::Settle {
                hold: admitted.hold.id.clone(),
                cost,
                id: id.clone(),
                outcome: Box::new(outcome(None)),
                output: admitted.output_json(),
            };
            if let Written::Settled(SettledWithin::Now(resolution)) = store::write(&self.inner.pool, both).await? {
                failpoint("executions.after_settle");
                return Ok((resolution.charged, usage));
            }
            // Not settled now (resolved before, or lapsed): the ledger says
            // what happened, and the outcome follows as elsewhere.
        }
        let resolution = match self.inner.ledger.settle(&admitted.hold.id, cost).await {
            // The hold lapsed under a running execution (its renewals failed
            // for longer than a lease): the work was still delivered.
            Err(LedgerError::AlreadyResolved(HoldStatus::Expired)) => self.settle_late(admitted, cost).await?,
            other => other?,
        };
        failpoint("executions.after_settle");
        let finish =
            Write::Finish { id, outcome: Box::new(outcome(Some(&resolution))), output: admitted.output_json() };
        store::write(&self.inner.pool, finish).await?;
        Ok((resolution.charged, usage))
    }

    /// Charges `cost` for an execution whose hold expired before it could
    /// settle: a new hold of what it cost (or, when the balance no longer
    /// covers it, of what is left: never an overspend), settled at once,
    /// once (idempotent by the execution). The shortfall, if any, is logged.
    async fn settle_late(&self, admitted: &Admitted, cost: Money) -> Result<Resolution, ExecutionError> {
        let ledger = &self.inner.ledger;
        let request = |amount| HoldRequest {
            org_id: admitted.hold.org_id.clone(),
            amount,
            reference: admitted.id.to_string(),
            idempotency_key: Some(format!("execution:{}:late", admitted.id)),
            expires_in: Some(self.inner.leases.lease()),
        };
        let hold = match ledger.hold(request(cost)).await {
            Err(LedgerError::InsufficientBalance { available, .. }) if available.is_positive() => {
                ledger.hold(request(available)).await?
            }
            other => other?,
        };
        let resolution = ledger.settle(&hold.id, cost).await?;
        let shortfall = cost.units().saturating_sub(resolution.charged.units());
        tracing::warn!(
            execution_id = %admitted.id, hold_id = %admitted.hold.id, charged = resolution.charged.units(), shortfall,
            "the hold expired before the execution settled; charged afterwards"
        );
        Ok(resolution)
    }

    /// Releases the hold and records the failure. Never fails: problems are
    /// logged (the sweeper releases a hold this could not).
    pub(crate) async fn fail(&self, admitted: &Admitted, error: &ExecutionError) {
        self.finish_unpaid(admitted, error, ExecutionStatus::Failed).await;
    }

    /// Releases the hold and records the execution as `status` (failed or
    /// canceled) with `error`. Never fails; problems are logged.
    pub(crate) async fn finish_unpaid(&self, admitted: &Admitted, error: &ExecutionError, status: ExecutionStatus) {
        if let Err(e) = self.inner.ledger.release(&admitted.hold.id).await {
            tracing::error!(execution_id = %admitted.id, error = %e, "releasing an unpaid execution's hold failed; the sweeper will");
        }
        let outcome = Outcome {
            status: Some(status.as_str()),
            cost: Some(0),
            error_code: Some(error.code().as_str()),
            error_message: Some(error.to_string()),
            finished_at: Some(time::now()),
            decision: admitted.decision_json(),
            ..Outcome::default()
        };
        let finish =
            Write::Finish { id: admitted.id.to_string(), outcome: Box::new(outcome), output: admitted.output_json() };
        if let Err(e) = store::write(&self.inner.pool, finish).await {
            tracing::error!(execution_id = %admitted.id, error = %e, "recording an unpaid execution failed");
        }
    }
}
