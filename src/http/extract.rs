//! `Query<T>` and `Path<T>`: axum's extractors with their rejections turned into our
//! JSON errors (`{"error": ...}`, 400), so `?limit=x` or a malformed path parameter
//! is answered like every other bad input instead of with axum's plain text.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The query string, parsed into `T`; a value that does not parse is a JSON 400.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Query(t))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    format!("query string: {}", rejection.body_text()),
                )
            })
    }
}

/// The path parameters, parsed into `T`; a value that does not parse is a JSON 400.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| Path(t))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    format!("path: {}", rejection.body_text()),
                )
            })
    }
}
