use std::path::PathBuf;

use modelroute_types::Secret;
use serde::{Deserialize, Serialize};

/// Where objects are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A folder on the local disk (`root`): the embedded default.
    #[default]
    Local,
    /// Any S3-compatible store (AWS S3, Cloudflare R2, MinIO), `[files.s3]`.
    S3,
}

/// The `[files]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// `local` or `s3`.
    pub store: StoreKind,
    /// The folder of the local store (created when missing).
    pub root: PathBuf,
    /// `[files.s3]`: the bucket, where it is, and its credentials (from the
    /// environment: `MODELROUTE_FILES__S3__ACCESS_KEY_ID` and
    /// `…__SECRET_ACCESS_KEY`, else AWS's own `AWS_*` variables and
    /// instance credentials).
    pub s3: S3Config,
    /// The largest upload, in bytes; a larger one is refused with 413
    /// before it fills the store.
    pub max_upload_bytes: u64,
    /// Content types an upload may declare (`type/subtype`, lowercase).
    pub allowed_types: Vec<String>,
    /// How long an upload is kept unless the org says otherwise.
    pub upload_ttl_secs: u64,
    /// How long an execution's output is kept unless the org says otherwise.
    pub output_ttl_secs: u64,
    /// The longest time-to-live an org may choose.
    pub max_ttl_secs: u64,
    /// The shortest time-to-live an org may choose.
    pub min_ttl_secs: u64,
    /// Bytes an org may keep in files (none: no quota). An org may set a
    /// lower quota for itself, never a higher one.
    pub quota_bytes: Option<u64>,
    /// How long a signed download link works by default.
    pub link_ttl_secs: u64,
    /// The longest a signed link may work.
    pub max_link_ttl_secs: u64,
    /// An object without a row is removed by the orphan sweep once it is
    /// this old (an upload in progress has no row yet).
    pub orphan_grace_secs: u64,
    /// How often the sweeps run.
    pub sweep_interval_secs: u64,
    /// Files deleted per batch of the expiry sweep.
    pub sweep_batch: u32,
    /// The largest file an execution may take inline (as a data URL).
    pub max_inline_bytes: u64,
    /// `[files.rehost]`: downloading providers' output URLs.
    pub rehost: RehostConfig,
    /// Bytes per part of a multipart upload to the store (S3's minimum is
    /// 5 MiB); an upload holds at most `upload_concurrency` parts in memory.
    pub part_bytes: usize,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            store: StoreKind::Local,
            root: PathBuf::from("./data/files"),
            s3: S3Config::default(),
            max_upload_bytes: 512 * 1024 * 1024,
            allowed_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "application/pdf",
                "audio/wav",
                "audio/mpeg",
                "audio/ogg",
                "audio/flac",
                "video/mp4",
                "video/webm",
                "text/plain",
                "text/csv",
                "text/markdown",
                "application/json",
                "application/jsonl",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            upload_ttl_secs: 30 * DAY,
            output_ttl_secs: 7 * DAY,
            max_ttl_secs: 365 * DAY,
            min_ttl_secs: 3_600,
            quota_bytes: None,
            link_ttl_secs: 3_600,
            max_link_ttl_secs: 7 * DAY,
            orphan_grace_secs: 6 * 3_600,
            sweep_interval_secs: 300,
            sweep_batch: 500,
            max_inline_bytes: 20 * 1024 * 1024,
            rehost: RehostConfig::default(),
            part_bytes: 8 * 1024 * 1024,
            upload_concurrency: 2,
        }
    }
}

/// `[files.s3]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The endpoint of a store other than AWS (R2, MinIO): `https://…`.
    pub endpoint: Option<String>,
    /// The region (`auto` on R2).
    pub region: Option<String>,
    /// Allow an `http://` endpoint (a store on the local network).
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`bucket.host`) instead of path-style.
    pub virtual_hosted: bool,
    /// The access key id; empty: `AWS_ACCESS_KEY_ID` or instance credentials.
    pub access_key_id: Secret,
    /// The secret access key; set it through the environment, never in a file.
    pub secret_access_key: Secret,
}

/// `[files.rehost]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RehostConfig {
    /// The largest output downloaded.
    pub max_bytes: u64,
    /// The whole download's time limit.
    pub timeout_secs: u64,
    /// Redirects followed (each to an allowed host only).
    pub max_redirects: usize,
    /// Allow `http://` URLs (test stand-ins on loopback); production
    /// downloads are `https://` only.
    pub allow_http: bool,
}

impl Default for RehostConfig {
    fn default() -> Self {
        Self { max_bytes: 100 * 1024 * 1024, timeout_secs: 60, max_redirects: 3, allow_http: false }
    }
}
