//! Query strings: parsed with unknown parameters refused, and times given as
//! RFC 3339, each error a 400 naming the parameter.

use actix_web::{HttpRequest, web};
use chrono::{DateTime, NaiveDateTime};
use modelroute_types::text::has_control;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The request's query string as `T` (which should deny unknown fields).
/// A parameter holding a control character (a NUL, a newline) is a 400
/// naming it: no filter needs one, and PostgreSQL cannot compare with a NUL.
pub(crate) fn parse<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    let query = req.query_string();
    if let Ok(pairs) = web::Query::<Vec<(String, String)>>::from_query(query)
        && let Some((name, _)) = pairs.iter().find(|(k, v)| has_control(k) || has_control(v))
    {
        return Err(ApiError::invalid_param(name.clone(), format!("{name} must not contain control characters")));
    }
    Ok(web::Query::<T>::from_query(query).map_err(|e| ApiError::invalid_param("query", e.to_string()))?.into_inner())
}

/// An optional RFC 3339 time parameter, as UTC.
pub(crate) fn time(param: &'static str, value: Option<String>) -> Result<Option<NaiveDateTime>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(&v).map(|t| t.naive_utc()).map_err(|_| {
                ApiError::invalid_param(param, format!("`{v}` is not an RFC 3339 time like 2026-11-01T00:00:00Z"))
            })
        })
        .transpose()
}
