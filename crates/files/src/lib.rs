//! Files in platform-owned object storage: customers' uploads and
//! providers' outputs re-hosted, on `object_store` (a local folder on the
//! embedded default; any S3-compatible store in production). Metadata in
//! the database, objects keyed per org and file id, signed expiring
//! download links, per-org time-to-live and quota, and the sweeps that
//! delete what lapsed and what a crash left behind. A library: no HTTP
//! server in here.

mod config;
mod error;
pub mod links;
mod rehost;
mod service;
pub mod sniff;
mod store;

pub use store::open as open_store;

pub use config::{FilesConfig, RehostConfig, S3Config, StoreKind};
pub use error::FileError;
pub use rehost::{Rehost, host_allowed};
pub use service::{
    ByteRange, Download, FileRecord, FileSettings, Files, ListQuery, NewFile, Page, Purpose, SettingsUpdate, Usage,
};
