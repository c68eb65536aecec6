//! Reading JSON bodies with a size limit and errors that name the field
//! (`messages[0].role: unknown variant ...`).

use actix_web::web;
use bytes::BytesMut;
use futures_util::StreamExt as _;
use modelroute_types::Code;
use serde::de::DeserializeOwned;

use crate::ApiError;

pub(crate) async fn read_json<T: DeserializeOwned>(payload: web::Payload, limit: usize) -> Result<T, ApiError> {
    read_json_or(payload, limit, None).await
}

/// The same, with `T::default()` for an empty body (all fields optional).
pub(crate) async fn read_json_or_default<T: DeserializeOwned + Default>(
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    read_json_or(payload, limit, Some(T::default())).await
}

async fn read_json_or<T: DeserializeOwned>(
    mut payload: web::Payload,
    limit: usize,
    if_empty: Option<T>,
) -> Result<T, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(Code::InvalidRequest, format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(Code::PayloadTooLarge, format!("the request body exceeds {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        if let Some(default) = if_empty {
            return Ok(default);
        }
        return Err(ApiError::new(Code::InvalidRequest, "the request body is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::new(Code::InvalidRequest, format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("{path}: {inner}"))
        }
    })
}
