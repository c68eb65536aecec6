//! An org's export (access and portability, docs/PRIVACY.md): every class
//! of the org's data, each from the crate that owns it, written as one
//! archive ([`modelroute_privacy::Export`]) into the org's file store, and
//! a signed link to it emailed to whoever asked. The `privacy.export` job
//! runs it; `POST /v1/orgs/{org}/exports` and `modelroute orgs export`
//! enqueue it.

use modelroute_executions::ExecutionFilter;
use modelroute_files::{FileRecord, ListQuery, NewFile, Purpose};
use modelroute_identity::AuditFilter;
use modelroute_jobs::{Enqueued, NewJob};
use modelroute_privacy::Export;
use modelroute_types::{ExecutionId, OrgId, UserId, time};
use serde::{Deserialize, Serialize};

use crate::{AppError, Services};

/// The job that writes an export.
pub const EXPORT_JOB: &str = "privacy.export";

/// What the export job is asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportRequest {
    /// The org exported.
    pub org: OrgId,
    /// Who asked (emailed the link): a member of the org.
    pub requested_by: UserId,
}

/// How long the emailed link works.
const LINK_TTL_SECS: u64 = 7 * 24 * 3_600;

impl Services {
    /// Queues an export of `org` for `requested_by` (a member, emailed the
    /// link), audited as `org.export_requested`. Answers the job's id; one
    /// export of an org is written at a time.
    ///
    /// # Errors
    /// [`AppError::ExportPending`] while another is being written; the job
    /// queue or the audit log failing.
    pub async fn request_export(
        &self,
        org: &OrgId,
        requested_by: &UserId,
        actor: &modelroute_identity::Actor,
    ) -> Result<modelroute_types::JobId, AppError> {
        let request = ExportRequest { org: org.clone(), requested_by: requested_by.clone() };
        let job = NewJob::new(EXPORT_JOB, &request)?.queue("default").max_attempts(3).unique(format!("export:{org}"));
        let Enqueued::New(id) = self.queue.enqueue(&job).await? else {
            return Err(AppError::ExportPending);
        };
        self.identity.record(Some(org), actor, "org.export_requested", Some(id.as_str()), None).await?;
        Ok(id)
    }

    /// Every class of `org`'s data as one archive (the format of
    /// [`modelroute_privacy::Export`]), in memory.
    ///
    /// # Errors
    /// A failing crate's error.
    pub async fn export_archive(&self, org: &OrgId) -> Result<Vec<u8>, AppError> {
        let mut out = Export::new();
        let the_org = self.identity.org(org).await?;
        let restriction = self.identity.restriction(org).await?;
        out.class("org", &[serde_json::json!({ "org": the_org, "restriction": restriction })])?;
        out.class("members", &self.identity.members(org).await?)?;
        out.class("projects", &self.identity.projects(org).await?)?;
        out.class("api_keys", &self.identity.list_api_keys(org).await?)?;

        let mut executions = Vec::new();
        let mut usage = Vec::new();
        let mut filter = ExecutionFilter { limit: 100, ..ExecutionFilter::default() };
        loop {
            let page = self.executor.list(org, &filter).await?;
            executions.extend(page.executions);
            let Some(next) = page.next_cursor else { break };
            filter.cursor = Some(ExecutionId::from_trusted(next));
        }
        out.class("executions", &executions)?;
        let mut filter = ExecutionFilter { limit: 1_000, ..ExecutionFilter::default() };
        loop {
            let page = self.executor.usage(org, &filter).await?;
            usage.extend(page.records);
            let Some(next) = page.next_cursor else { break };
            filter.cursor = Some(ExecutionId::from_trusted(next));
        }
        out.class("usage", &usage)?;

        let mut journal = Vec::new();
        loop {
            let page = self.ledger.entries_before(org, journal.last(), 200).await?;
            let short = page.len() < 200;
            journal.extend(page);
            if short {
                break;
            }
        }
        out.class("journal", &journal)?;

        out.class("webhook_endpoints", &self.webhooks.endpoints(org).await?)?;
        let mut files: Vec<FileRecord> = Vec::new();
        let mut q = ListQuery { limit: Some(100), ..ListQuery::default() };
        loop {
            let page = self.files.list(org, &q).await?;
            files.extend(page.data);
            match files.last() {
                Some(last) if page.has_more => q.after = Some(last.id.clone()),
                _ => break,
            }
        }
        out.class("files", &files)?;

        let mut events = Vec::new();
        let mut filter = AuditFilter { limit: 500, ..AuditFilter::default() };
        loop {
            let page = self.identity.audit_events(org, &filter).await?;
            let short = page.len() < 500;
            filter.cursor = page.last().map(|e| e.id.clone());
            events.extend(page);
            if short {
                break;
            }
        }
        out.class("audit_events", &events)?;
        Ok(out.finish(&serde_json::json!({ "org": org }), time::now())?)
    }

    /// Writes `request`'s export into the org's file store and emails a
    /// signed link to who asked. Answers the stored file.
    ///
    /// # Errors
    /// A failing crate's error (the job retries).
    pub async fn export_org(&self, request: &ExportRequest) -> Result<FileRecord, AppError> {
        let archive = self.export_archive(&request.org).await?;
        let filename = format!("modelroute-export-{}-{}.jsonl", request.org, time::now().format("%Y%m%dT%H%M%SZ"));
        let new = NewFile {
            org: request.org.clone(),
            project: None,
            purpose: Purpose::Export,
            filename,
            content_type: Some("application/jsonl".into()),
            execution: None,
        };
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(archive))]);
        let file = self.files.upload(new, body).await?;
        let (url, expires) = self.files.link(&file.id, Some(LINK_TTL_SECS))?;
        let text = format!(
            "The export of your organization's data you asked for is ready: {} bytes, one JSON Lines \
             document (the format is described in docs/PRIVACY.md).\n\nDownload it until {} (UTC):\n{url}\n\n\
             It is also listed among the organization's files as {}.",
            file.size_bytes,
            time::rfc3339(expires),
            file.id
        );
        self.identity
            .email_member(&request.org, &request.requested_by, "export_ready", "Your ModelRoute data export", &text)
            .await?;
        tracing::info!(org = %request.org, file = %file.id, bytes = file.size_bytes, "export written");
        Ok(file)
    }
}
