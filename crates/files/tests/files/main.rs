//! The files crate as a library, on both database backends and both
//! stores: the local folder, and a real S3-compatible server (moto, in
//! server mode) driven through the real `object_store` AWS client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod fixture;
mod lifetime;
mod refusals;
mod rehost;
mod roundtrip;
