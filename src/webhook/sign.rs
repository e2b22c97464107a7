//! Standard Webhooks signatures (SPEC §7): `v1,` + base64 HMAC-SHA256 over
//! `{id}.{timestamp}.{body}`, keyed by the base64-decoded part of a `whsec_` secret.
//!
//! Pure code: generating secrets, signing (one `v1,` signature per valid key, space
//! separated, during a rotation) and verifying — the verifier is what receivers (and
//! our tests) run. No I/O, no clock: callers pass the timestamp.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a generated secret (Svix uses 24; more costs nothing).
const SECRET_BYTES: usize = 32;

/// A decoded signing key, kept as a keyed HMAC state that every signature clones
/// (the key schedule is computed once). `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with whsec_")]
    MissingPrefix,
    #[error("the part after whsec_ is not base64")]
    NotBase64,
    #[error("the secret's key is empty")]
    Empty,
}

impl SigningKey {
    /// Decodes `whsec_<base64>`. A secret without the prefix is refused: every secret
    /// the bridge hands out has it, so its absence means a wrong value.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        // HMAC takes keys of any length, so this only fails on the empty key above.
        HmacSha256::new_from_slice(&key)
            .map(SigningKey)
            .map_err(|_| SecretError::Empty)
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(msg_id, timestamp, body)))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        self.keyed(msg_id, timestamp, body)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// The HMAC state after `{id}.{timestamp}.{body}`.
    fn keyed(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Whether `signature` (one `v1,<base64>` entry) is this key's signature of the
    /// message, compared in constant time.
    fn verifies(&self, msg_id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Some(encoded) = signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            return false;
        };
        self.keyed(msg_id, timestamp, body)
            .verify_slice(&given)
            .is_ok()
    }
}

/// A fresh `whsec_` secret from the operating system's CSPRNG.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header value: one signature per key, space separated
/// (the current key first).
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any signature in a `webhook-signature` header was made with `secret` over
/// this message. What a receiver runs (it should also check the timestamp is recent).
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(key) = SigningKey::parse(secret) else {
        return false;
    };
    header
        .split(' ')
        .filter(|s| !s.is_empty())
        .any(|sig| key.verifies(msg_id, timestamp, body, sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference vector (SPEC §7).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn webhook_signature_matches_the_standard_webhooks_reference_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(MSG_ID, TIMESTAMP, BODY.as_bytes()), EXPECTED);
        assert!(verify(SECRET, MSG_ID, TIMESTAMP, BODY.as_bytes(), EXPECTED));
    }

    #[test]
    fn webhook_signature_negative_twin_does_not_verify() {
        let twin = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert!(!verify(SECRET, MSG_ID, TIMESTAMP, BODY.as_bytes(), twin));
    }

    #[test]
    fn webhook_signature_fails_on_any_changed_part() {
        let check = |id: &str, ts: i64, body: &str, header: &str| {
            verify(SECRET, id, ts, body.as_bytes(), header)
        };
        assert!(!check("msg_other", TIMESTAMP, BODY, EXPECTED));
        assert!(!check(MSG_ID, TIMESTAMP + 1, BODY, EXPECTED));
        assert!(!check(
            MSG_ID,
            TIMESTAMP,
            r#"{"test": 2432232315}"#,
            EXPECTED
        ));
        assert!(!check(
            MSG_ID,
            TIMESTAMP,
            BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!check(MSG_ID, TIMESTAMP, BODY, "v1,not base64!"));
        assert!(!check(MSG_ID, TIMESTAMP, BODY, ""));
        assert!(!verify(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            MSG_ID,
            TIMESTAMP,
            BODY.as_bytes(),
            EXPECTED
        ));
    }

    #[test]
    fn webhook_signature_header_during_rotation_verifies_with_either_key() {
        let old = generate_secret();
        let new = generate_secret();
        let keys = [
            SigningKey::parse(&new).unwrap(),
            SigningKey::parse(&old).unwrap(),
        ];
        let header = signature_header(&keys, MSG_ID, TIMESTAMP, BODY.as_bytes());
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(verify(&new, MSG_ID, TIMESTAMP, BODY.as_bytes(), parts[0]));
        assert!(verify(&old, MSG_ID, TIMESTAMP, BODY.as_bytes(), parts[1]));
        assert!(!verify(&old, MSG_ID, TIMESTAMP, BODY.as_bytes(), parts[0]));
        assert!(verify(&old, MSG_ID, TIMESTAMP, BODY.as_bytes(), &header));
        assert!(!verify(
            &generate_secret(),
            MSG_ID,
            TIMESTAMP,
            BODY.as_bytes(),
            &header
        ));
    }

    #[test]
    fn webhook_generated_secrets_are_whsec_base64_of_random_bytes() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let key = STANDARD
            .decode(a.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert!((24..=32).contains(&key.len()));
        assert!(SigningKey::parse(&a).is_ok());
    }

    #[test]
    fn webhook_secrets_without_prefix_or_base64_are_refused() {
        assert_eq!(
            SigningKey::parse("abc").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            SigningKey::parse("whsec_!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(SigningKey::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(
            format!("{:?}", SigningKey::parse(SECRET).unwrap()),
            "SigningKey(..)"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn the_signer_and_the_verifier_agree_and_mutations_are_refused(
                key in proptest::collection::vec(any::<u8>(), 1..64),
                other_key in proptest::collection::vec(any::<u8>(), 1..64),
                msg_id in "[a-zA-Z0-9_]{1,40}",
                timestamp in 0i64..4_000_000_000,
                body in proptest::collection::vec(any::<u8>(), 0..512),
                flip in any::<proptest::sample::Index>(),
            ) {
                let secret = format!("whsec_{}", STANDARD.encode(&key));
                let other = format!("whsec_{}", STANDARD.encode(&other_key));
                let Ok(signing) = SigningKey::parse(&secret) else {
                    return Err(TestCaseError::fail("a generated secret parses"));
                };
                let Ok(other_signing) = SigningKey::parse(&other) else {
                    return Err(TestCaseError::fail("a generated secret parses"));
                };
                let header = signature_header(&[signing], &msg_id, timestamp, &body);
                prop_assert!(verify(&secret, &msg_id, timestamp, &body, &header));
                if key != other_key {
                    prop_assert!(!verify(&other, &msg_id, timestamp, &body, &header));
                }
                // During a rotation both keys' signatures are in the header.
                let Ok(signing) = SigningKey::parse(&secret) else {
                    return Err(TestCaseError::fail("a generated secret parses"));
                };
                let both = signature_header(&[other_signing, signing], &msg_id, timestamp, &body);
                prop_assert!(verify(&secret, &msg_id, timestamp, &body, &both));
                prop_assert!(verify(&other, &msg_id, timestamp, &body, &both));

                prop_assert!(!verify(&secret, &msg_id, timestamp + 1, &body, &header));
                let other_id = format!("{msg_id}x");
                prop_assert!(!verify(&secret, &other_id, timestamp, &body, &header));
                let mut tampered = body.clone();
                if tampered.is_empty() {
                    tampered.push(0);
                } else {
                    let i = flip.index(tampered.len());
                    tampered[i] ^= 0x01;
                }
                prop_assert!(!verify(&secret, &msg_id, timestamp, &tampered, &header));
            }
        }
    }
}
