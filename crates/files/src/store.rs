//! The object store behind the files: a local folder or an S3-compatible
//! bucket, and where in it an org's objects live.

use std::sync::Arc;

use modelroute_types::{FileId, OrgId};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::{FileError, FilesConfig, StoreKind};

/// The prefix every object of the platform's is under.
pub(crate) const ROOT: &str = "orgs";

/// Opens the configured store. The local folder is created when missing.
///
/// # Errors
/// [`FileError::Config`] for a folder that cannot be created or an S3
/// section without a bucket.
pub fn open(config: &FilesConfig) -> Result<Arc<dyn ObjectStore>, FileError> {
    match config.store {
        StoreKind::Local => {
            std::fs::create_dir_all(&config.root)
                .map_err(|e| FileError::Config(format!("cannot create root {}: {e}", config.root.display())))?;
            let store = LocalFileSystem::new_with_prefix(&config.root)
                .map_err(|e| FileError::Config(format!("root {}: {e}", config.root.display())))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
        StoreKind::S3 => {
            let s3 = &config.s3;
            if s3.bucket.trim().is_empty() {
                return Err(FileError::Config("store = \"s3\" needs [files.s3] bucket".into()));
            }
            // The AWS client is reqwest on rustls without a built-in crypto
            // provider: install ring's, as every other client here uses
            // (a no-op when the process already has one).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(s3.bucket.trim())
                .with_allow_http(s3.allow_http)
                .with_virtual_hosted_style_request(s3.virtual_hosted);
            if let Some(endpoint) = s3.endpoint.as_deref().filter(|e| !e.is_empty()) {
                builder = builder.with_endpoint(endpoint);
            }
            if !s3.access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(s3.access_key_id.expose())
                    .with_secret_access_key(s3.secret_access_key.expose());
            }
            if let Some(region) = s3.region.as_deref().filter(|r| !r.is_empty()) {
                builder = builder.with_region(region);
            }
            let store = builder.build().map_err(|e| FileError::Config(format!("[files.s3]: {e}")))?;
            Ok(Arc::new(store))
        }
    }
}

/// The key of a file's object: per org and per file id, never a name the
/// customer chose.
pub(crate) fn key_of(org: &OrgId, id: &FileId) -> String {
    format!("{ROOT}/{org}/{id}")
}

/// The same as an object-store path.
pub(crate) fn path_of(key: &str) -> Path {
    Path::from(key)
}
