//! Admin authentication: `Authorization: Bearer <BRIDGE_API_TOKEN>`, compared in
//! constant time. Without a configured token the admin API answers loopback clients
//! only (start-up warns about it): IPv4-mapped loopback (`::ffff:127.0.0.1`) counts,
//! and a request carrying `Forwarded`, `X-Forwarded-For` or `X-Real-IP` does not —
//! it came through a proxy on this host, not from this host (401).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::error::ApiError;

#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Arc<SecretString>>,
}

impl AdminAuth {
    pub fn new(token: Option<SecretString>) -> Self {
        AdminAuth {
            token: token.map(Arc::new),
        }
    }

    /// Whether `BRIDGE_API_TOKEN` is configured (else only loopback is admitted).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn check(
        &self,
        authorization: Option<&str>,
        peer: Option<SocketAddr>,
        proxied: bool,
    ) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            if proxied {
                return Err(unauthorized(
                    "a proxied request needs BRIDGE_API_TOKEN; without it the admin API \
                     answers direct loopback clients only",
                ));
            }
            return match peer {
                Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(()),
                _ => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the admin API answers loopback clients only until BRIDGE_API_TOKEN is set",
                )),
            };
        };
        let presented = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(unauthorized("missing bearer token"));
        };
        // `ct_eq` on slices of different lengths returns false without comparing;
        // leaking the token's length is accepted practice (it is not the secret).
        if bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
            Ok(())
        } else {
            Err(unauthorized("invalid bearer token"))
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// Headers a reverse proxy adds: their presence means the peer address is the proxy's.
const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Middleware guarding every admin route.
pub async fn require_admin(State(auth): State<AdminAuth>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let proxied = PROXY_HEADERS
        .iter()
        .any(|name| req.headers().contains_key(*name));
    match auth.check(authorization, peer, proxied) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut response = e.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_token_must_match_exactly() {
        let auth = AdminAuth::new(Some(SecretString::from("s3cret")));
        assert!(auth
            .check(Some("Bearer s3cret"), addr("10.0.0.1:1"), false)
            .is_ok());
        assert_eq!(
            auth.check(Some("Bearer s3cre"), None, false)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            auth.check(Some("Bearer s3cret2"), None, false)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            auth.check(Some("Basic s3cret"), None, false)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            auth.check(None, addr("127.0.0.1:1"), false)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn without_a_token_only_loopback_is_admitted() {
        let auth = AdminAuth::new(None);
        assert!(auth.check(None, addr("127.0.0.1:5"), false).is_ok());
        assert!(auth.check(None, addr("[::1]:5"), false).is_ok());
        assert_eq!(
            auth.check(None, addr("192.168.1.2:5"), false)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(auth.check(None, None, false).unwrap_err().status, 403);
        assert!(auth
            .check(None, addr("[::ffff:127.0.0.1]:5"), false)
            .is_ok());
        assert_eq!(
            auth.check(None, addr("[::ffff:10.0.0.1]:5"), false)
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn without_a_token_a_proxied_loopback_request_is_refused() {
        let auth = AdminAuth::new(None);
        assert_eq!(
            auth.check(None, addr("127.0.0.1:5"), true)
                .unwrap_err()
                .status,
            401
        );
        // With a token, proxies are fine: the token decides.
        let auth = AdminAuth::new(Some(SecretString::from("s3cret")));
        assert!(auth
            .check(Some("Bearer s3cret"), addr("127.0.0.1:5"), true)
            .is_ok());
    }
}
