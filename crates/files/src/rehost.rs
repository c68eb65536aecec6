//! Re-hosting a provider's output: the gateway downloads a URL a provider
//! answered with — only from the hosts that provider's configuration
//! allows, redirects included, under a size cap and a time limit, its
//! content type checked — and stores it as an `output` file of the
//! execution. The customer gets the platform's file id and link; the
//! provider's URL is never in an error either (it is logged).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use modelroute_types::{ExecutionId, OrgId, ProjectId};
use url::Url;

use crate::service::{FileRecord, Files, NewFile, Purpose};
use crate::{FileError, sniff};

/// Where an output goes and where it may come from.
#[derive(Clone, Debug)]
pub struct Rehost {
    /// The org that ran the execution.
    pub org: OrgId,
    /// Its project.
    pub project: Option<ProjectId>,
    /// The execution.
    pub execution: ExecutionId,
    /// Hosts the provider's outputs may be fetched from: `host`,
    /// `host:port`, or `*.suffix` (any subdomain of `suffix`).
    pub allowed_hosts: Vec<String>,
}

/// Whether `url`'s host (and port) is one of `allowed`.
#[must_use]
pub fn host_allowed(url: &Url, allowed: &[String]) -> bool {
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
        return false;
    };
    let port = url.port();
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let (pattern, want_port) = match entry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => (h.to_owned(), p.parse().ok()),
            _ => (entry.clone(), None),
        };
        if want_port.is_some() && want_port != port {
            return false;
        }
        match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix) && {
                    let dot = host.len() - suffix.len() - 1;
                    host.as_bytes().get(dot) == Some(&b'.')
                }
            }
            None => host == pattern,
        }
    })
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "application/pdf" => "pdf",
        "audio/wav" => "wav",
        "audio/mpeg" => "mp3",
        "audio/ogg" => "ogg",
        "audio/flac" => "flac",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "application/json" => "json",
        _ => "bin",
    }
}

impl Files {
    /// Downloads `url` (a provider's output) and stores it as an output
    /// file of `target.execution`.
    ///
    /// # Errors
    /// [`FileError::Rehost`] for a host that is not allowed (redirects
    /// included), a scheme other than `https` (unless `allow_http`), an
    /// error status, a body over `rehost.max_bytes`, a download slower than
    /// `rehost.timeout_secs`, or a content type that is not allowed or not
    /// what the bytes are; the store or database failing.
    pub async fn rehost(&self, target: &Rehost, url: &str) -> Result<FileRecord, FileError> {
        let config = &self.config().rehost;
        let deadline = Duration::from_secs(config.timeout_secs);
        match tokio::time::timeout(deadline, self.rehost_inner(target, url)).await {
            Ok(result) => {
                if let Err(e) = &result {
                    tracing::warn!(execution = %target.execution, error = %e, url, "re-hosting an output failed");
                }
                result
            }
            Err(_) => {
                tracing::warn!(execution = %target.execution, url, "re-hosting an output timed out");
                Err(FileError::Rehost(format!("the provider's output did not arrive within {} s", config.timeout_secs)))
            }
        }
    }

    async fn rehost_inner(&self, target: &Rehost, url: &str) -> Result<FileRecord, FileError> {
        let config = &self.config().rehost;
        let mut current =
            Url::parse(url).map_err(|_| FileError::Rehost("the provider's output URL is invalid".into()))?;
        let mut redirects = 0;
        let response = loop {
            let scheme_ok = current.scheme() == "https" || (config.allow_http && current.scheme() == "http");
            if !scheme_ok {
                return Err(FileError::Rehost("the provider's output URL is not https".into()));
            }
            if !host_allowed(&current, &target.allowed_hosts) {
                return Err(FileError::Rehost("the provider's output is on a host its route does not allow".into()));
            }
            let response = self.http().get(current.clone()).send().await.map_err(|e| {
                FileError::Rehost(format!("fetching the provider's output failed: {}", e.without_url()))
            })?;
            if response.status().is_redirection() {
                redirects += 1;
                if redirects > config.max_redirects {
                    return Err(FileError::Rehost("the provider's output redirected too many times".into()));
                }
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FileError::Rehost("the provider's output redirected nowhere".into()))?;
                current = current
                    .join(location)
                    .map_err(|_| FileError::Rehost("the provider's output redirected to an invalid URL".into()))?;
                continue;
            }
            break response;
        };
        if !response.status().is_success() {
            return Err(FileError::Rehost(format!("the provider's output answered {}", response.status().as_u16())));
        }
        let too_large =
            || FileError::Rehost(format!("the provider's output is larger than {} bytes", config.max_bytes));
        if response.content_length().is_some_and(|n| n > config.max_bytes) {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(sniff::normalize)
            .filter(|t| t != "application/octet-stream");
        let max = config.max_bytes;
        let body = futures_util::stream::unfold((response, 0u64), move |(mut response, seen)| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let seen = seen.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
                    if seen > max {
                        Some((Err(RehostBodyError::TooLarge), (response, seen)))
                    } else {
                        Some((Ok::<Bytes, RehostBodyError>(chunk), (response, seen)))
                    }
                }
                Ok(None) => None,
                Err(e) => Some((Err(RehostBodyError::Failed(e.without_url().to_string())), (response, seen))),
            }
        })
        .boxed();
        let filename = format!("output.{}", extension_of(content_type.as_deref().unwrap_or_default()));
        let new = NewFile {
            org: target.org.clone(),
            project: target.project.clone(),
            purpose: Purpose::Output,
            filename,
            content_type,
            execution: Some(target.execution.clone()),
        };
        match self.upload(new, body).await {
            Ok(record) => {
                metrics::counter!("files_rehosted_total").increment(1);
                Ok(record)
            }
            Err(FileError::Interrupted(why)) if why == RehostBodyError::TooLarge.to_string() => Err(too_large()),
            Err(FileError::Interrupted(why)) => Err(FileError::Rehost(why)),
            Err(FileError::UnsupportedType(why)) => Err(FileError::Rehost(format!("the provider's output: {why}"))),
            Err(FileError::Empty) => Err(FileError::Rehost("the provider's output is empty".into())),
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RehostBodyError {
    #[error("over the re-hosting size cap")]
    TooLarge,
    #[error("the provider's output was cut off: {0}")]
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_by_port_or_by_subdomain() {
        let allowed =
            vec!["cdn.example.com".to_owned(), "*.blob.core.windows.net".to_owned(), "127.0.0.1:9000".to_owned()];
        let ok = |u: &str| host_allowed(&Url::parse(u).unwrap(), &allowed);
        assert!(ok("https://cdn.example.com/a.png"));
        assert!(ok("https://CDN.example.com/a.png"));
        assert!(ok("https://acct.blob.core.windows.net/x"));
        assert!(ok("http://127.0.0.1:9000/x"));
        assert!(!ok("https://blob.core.windows.net/x"), "the wildcard needs a subdomain");
        assert!(!ok("https://evilblob.core.windows.net/x"));
        assert!(!ok("https://cdn.example.com.evil.org/a.png"));
        assert!(!ok("http://127.0.0.1:9001/x"), "another port");
        assert!(!ok("https://other.example.com/a.png"));
        assert!(!host_allowed(&Url::parse("https://cdn.example.com/").unwrap(), &[]));
    }
}
