//! The W1 floor: the least work any Slack receiver must do — read the body, check the
//! timestamp window, verify the v0 HMAC in constant time, answer 200. Runs as its own
//! process (`bench floor-slack`) on tokio's default multi-thread runtime, like the
//! bridge, so its CPU time is read from /proc the same way.

use std::net::SocketAddr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::fakes::serve;
use crate::slackev::accept;

pub fn main(bind: SocketAddr, secret: String) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(bind).await?;
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
        serve(
            listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let key = key.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let ok = accept(&key, &parts.headers, &body);
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .expect("response")
                }
            },
        )
        .await;
        Ok(())
    })
}
