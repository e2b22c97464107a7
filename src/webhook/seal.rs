//! Webhook secrets and endpoint tokens at rest (SPEC §8): with `BRIDGE_SECRET_KEY`
//! they are stored sealed with AES-256-GCM (the RustCrypto `aes-gcm` crate), without
//! it as given.
//!
//! A sealed value is `sealed:v1:` followed by base64 of a fresh 96-bit nonce and the
//! ciphertext with its tag. The endpoint's id is the associated data, so a value
//! copied onto another endpoint's row does not open. Values move between the
//! `secret`, `previous_secret` and older-secret columns in SQL during a rotation, so
//! the column is deliberately not part of it.
//!
//! The store only ever holds what it is given: [`WebhookService`](super::WebhookService)
//! seals what it writes, the worker opens what it signs with, and [`prepare`] runs at
//! start-up — refusing a store whose sealed values this key (or no key) cannot open,
//! and sealing the rows written before the key was set.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::ExposeSecret;

use super::store::{WebhookEndpoint, WebhookStore};
use crate::config::SecretKey;
use crate::core::error::Detail;
use crate::core::ports::StoreError;

/// Marks a sealed value; no `whsec_` secret starts with it.
const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "webhook secrets in the store are encrypted, and BRIDGE_SECRET_KEY is not set: \
         set it to the key they were sealed with"
    )]
    NoKey,
    #[error(
        "BRIDGE_SECRET_KEY does not open the stored secrets of webhook endpoint {0}: it is \
         not the key they were sealed with (or the row was altered)"
    )]
    WrongKey(String),
    /// AES-GCM refuses only messages longer than 64 GiB.
    #[error("a webhook secret could not be encrypted")]
    Encrypt,
}

impl From<SealError> for StoreError {
    fn from(e: SealError) -> Self {
        StoreError::Corrupt(Detail::from_error(e))
    }
}

/// Seals and opens stored secrets. Cheap to share (`Arc`); without a key it passes
/// values through and refuses sealed ones.
pub struct Sealer {
    cipher: Option<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypts", &self.cipher.is_some())
            .finish()
    }
}

impl Sealer {
    /// Stores values as given.
    pub fn plain() -> Self {
        Sealer { cipher: None }
    }

    /// With `BRIDGE_SECRET_KEY`, or [`Sealer::plain`] without it.
    pub fn from_key(key: Option<&SecretKey>) -> Self {
        Sealer {
            cipher: key
                .map(|key| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.expose_secret()))),
        }
    }

    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    /// The value to store for `plain` on endpoint `endpoint`.
    pub fn seal(&self, endpoint: &str, plain: &str) -> Result<String, SealError> {
        let Some(cipher) = &self.cipher else {
            return Ok(plain.to_owned());
        };
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: endpoint.as_bytes(),
        };
        let sealed = cipher
            .encrypt(&nonce, payload)
            .map_err(|_| SealError::Encrypt)?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// The plain value of a stored one (as given, or sealed by this key).
    pub fn open(&self, endpoint: &str, stored: &str) -> Result<String, SealError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let cipher = self.cipher.as_ref().ok_or(SealError::NoKey)?;
        let wrong = || SealError::WrongKey(endpoint.to_owned());
        let bytes = STANDARD.decode(encoded).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: sealed,
            aad: endpoint.as_bytes(),
        };
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| wrong())?;
        String::from_utf8(plain).map_err(|_| wrong())
    }

    /// `ep` with its token and secrets as the store should hold them.
    pub fn seal_endpoint(&self, ep: &WebhookEndpoint) -> Result<WebhookEndpoint, SealError> {
        self.map_endpoint(ep, |v| self.seal(&ep.id, v))
    }

    /// `ep` as read from the store, with its token and secrets usable.
    pub fn open_endpoint(&self, ep: &WebhookEndpoint) -> Result<WebhookEndpoint, SealError> {
        self.map_endpoint(ep, |v| self.open(&ep.id, v))
    }

    fn map_endpoint(
        &self,
        ep: &WebhookEndpoint,
        f: impl Fn(&str) -> Result<String, SealError>,
    ) -> Result<WebhookEndpoint, SealError> {
        let mut out = ep.clone();
        out.token = ep.token.as_deref().map(&f).transpose()?;
        out.secret = f(&ep.secret)?;
        out.previous_secret = ep.previous_secret.as_deref().map(&f).transpose()?;
        out.older_secrets = ep
            .older_secrets
            .iter()
            .map(|(s, until)| f(s).map(|s| (s, *until)))
            .collect::<Result<_, _>>()?;
        Ok(out)
    }
}

/// What [`prepare`] found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub endpoints: usize,
    /// Stored values this start sealed (rows written before the key was set).
    pub sealed_now: usize,
}

/// At start-up: every stored secret must open with this key (or be plain when there
/// is none), and with a key, plain values are sealed now. Safe with several replicas
/// starting at once: each value is replaced only if it is still the one read.
pub async fn prepare(store: &dyn WebhookStore, sealer: &Sealer) -> Result<Prepared, StoreError> {
    let endpoints = store.endpoints().await?;
    let mut prepared = Prepared {
        endpoints: endpoints.len(),
        sealed_now: 0,
    };
    for ep in &endpoints {
        // Refuses a missing or wrong key before anything is written.
        sealer.open_endpoint(ep)?;
    }
    if !sealer.encrypts() {
        tracing::info!(
            "BRIDGE_SECRET_KEY is not set: webhook secrets and endpoint tokens are stored \
             unencrypted"
        );
        return Ok(prepared);
    }
    for ep in &endpoints {
        let stored = ep
            .token
            .iter()
            .chain(std::iter::once(&ep.secret))
            .chain(ep.previous_secret.iter())
            .chain(ep.older_secrets.iter().map(|(s, _)| s));
        for value in stored.filter(|v| !v.starts_with(PREFIX)) {
            let sealed = sealer.seal(&ep.id, value)?;
            let replaced = store.replace_stored_secret(&ep.id, value, &sealed).await?;
            prepared.sealed_now += usize::try_from(replaced).unwrap_or(usize::MAX);
        }
    }
    if prepared.sealed_now > 0 {
        tracing::info!(
            values = prepared.sealed_now,
            endpoints = prepared.endpoints,
            "webhook secrets and tokens stored before BRIDGE_SECRET_KEY was set are now encrypted"
        );
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer_with(byte: u8) -> Sealer {
        Sealer::from_key(Some(&SecretKey::new(secrecy::SecretBox::new(Box::new(
            [byte; 32],
        )))))
    }

    fn sealer() -> Sealer {
        sealer_with(7)
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_endpoint_only() {
        let s = sealer();
        let sealed = s.seal("ep_1", "whsec_c2VjcmV0").unwrap();
        assert!(sealed.starts_with(PREFIX), "{sealed}");
        assert!(!sealed.contains("whsec_"), "{sealed}");
        assert_eq!(s.open("ep_1", &sealed).unwrap(), "whsec_c2VjcmV0");
        // Another endpoint's row, another key, no key.
        assert!(matches!(s.open("ep_2", &sealed), Err(SealError::WrongKey(id)) if id == "ep_2"));
        let other = sealer_with(8);
        assert!(matches!(
            other.open("ep_1", &sealed),
            Err(SealError::WrongKey(_))
        ));
        assert!(matches!(
            Sealer::plain().open("ep_1", &sealed),
            Err(SealError::NoKey)
        ));
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let s = sealer();
        assert_ne!(s.seal("ep_1", "x").unwrap(), s.seal("ep_1", "x").unwrap());
    }

    #[test]
    fn an_altered_sealed_value_is_refused() {
        let s = sealer();
        let sealed = s.seal("ep_1", "whsec_abc").unwrap();
        let mut bytes = STANDARD.decode(&sealed[PREFIX.len()..]).unwrap();
        for i in [0, NONCE_LEN, bytes.len() - 1] {
            bytes[i] ^= 1;
            let altered = format!("{PREFIX}{}", STANDARD.encode(&bytes));
            assert!(s.open("ep_1", &altered).is_err(), "byte {i}");
            bytes[i] ^= 1;
        }
        for broken in ["sealed:v1:", "sealed:v1:!!", "sealed:v1:AAAA"] {
            assert!(s.open("ep_1", broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn plain_values_pass_through_with_or_without_a_key() {
        assert_eq!(sealer().open("ep_1", "whsec_abc").unwrap(), "whsec_abc");
        assert_eq!(
            Sealer::plain().seal("ep_1", "whsec_abc").unwrap(),
            "whsec_abc"
        );
        assert_eq!(
            Sealer::plain().open("ep_1", "whsec_abc").unwrap(),
            "whsec_abc"
        );
    }
}
