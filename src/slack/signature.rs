//! Slack request signing (v0): `X-Slack-Signature` is `v0=` + the hex HMAC-SHA256 of
//! `v0:{X-Slack-Request-Timestamp}:{raw body}` keyed with the app's signing secret.
//!
//! Pure: the caller passes the headers, the raw body and the current time, so the
//! check is testable against Slack's published example. The comparison is constant
//! time (subtle), and a timestamp more than [`MAX_SKEW_SECS`] away from now in either
//! direction is refused, so a captured request cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far the request's timestamp may be from our clock: Slack's documented 5 minutes.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// Why a request was refused. The message is safe to show the caller: it names the
/// problem, never the expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    #[error("missing X-Slack-Signature header")]
    MissingSignature,
    #[error("X-Slack-Request-Timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("X-Slack-Request-Timestamp is more than 5 minutes from now")]
    Stale,
    #[error("X-Slack-Signature does not match the request")]
    Mismatch,
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`: what Slack sends.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; if it did, the empty string
    // returned matches no signature, so the request would be refused, not accepted.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v0=");
    for byte in digest {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

/// Checks a request's signature headers against its raw body at time `now_unix`.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if now_unix.abs_diff(sent) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, timestamp, body);
    // Lengths are public (the format is fixed); `ct_eq` on slices of different lengths
    // returns false without comparing, which leaks nothing about the secret.
    if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's example from "Verifying requests from Slack".
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const NOW: i64 = 1_531_420_618;

    fn check(ts: Option<&str>, sig: Option<&str>, now: i64, expected: Result<(), SignatureError>) {
        assert_eq!(
            verify(SECRET.as_bytes(), ts, sig, BODY.as_bytes(), now),
            expected
        );
    }

    #[test]
    fn signs_slacks_published_example() {
        assert_eq!(
            sign(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes()),
            EXPECTED
        );
    }

    #[test]
    fn accepts_the_published_example_within_the_window() {
        check(Some(TIMESTAMP), Some(EXPECTED), NOW, Ok(()));
        check(Some(TIMESTAMP), Some(EXPECTED), NOW + 300, Ok(()));
        check(Some(TIMESTAMP), Some(EXPECTED), NOW - 300, Ok(()));
    }

    #[test]
    fn refuses_timestamps_outside_five_minutes_either_way() {
        check(
            Some(TIMESTAMP),
            Some(EXPECTED),
            NOW + 301,
            Err(SignatureError::Stale),
        );
        check(
            Some(TIMESTAMP),
            Some(EXPECTED),
            NOW - 301,
            Err(SignatureError::Stale),
        );
    }

    #[test]
    fn refuses_missing_or_malformed_headers() {
        check(
            None,
            Some(EXPECTED),
            NOW,
            Err(SignatureError::MissingTimestamp),
        );
        check(
            Some(TIMESTAMP),
            None,
            NOW,
            Err(SignatureError::MissingSignature),
        );
        check(
            Some("yesterday"),
            Some(EXPECTED),
            NOW,
            Err(SignatureError::BadTimestamp),
        );
    }

    #[test]
    fn refuses_a_wrong_signature_body_or_secret() {
        let wrong = EXPECTED.replace("a2114", "a2115");
        check(
            Some(TIMESTAMP),
            Some(&wrong),
            NOW,
            Err(SignatureError::Mismatch),
        );
        check(
            Some(TIMESTAMP),
            Some("v0=short"),
            NOW,
            Err(SignatureError::Mismatch),
        );
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                Some(TIMESTAMP),
                Some(EXPECTED),
                b"token=tampered",
                NOW
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another-secret",
                Some(TIMESTAMP),
                Some(EXPECTED),
                BODY.as_bytes(),
                NOW
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_for_another_timestamp_does_not_verify() {
        let other = sign(SECRET.as_bytes(), "1531420619", BODY.as_bytes());
        check(
            Some(TIMESTAMP),
            Some(&other),
            NOW,
            Err(SignatureError::Mismatch),
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const NOW: i64 = 1_700_000_000;

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn a_signed_request_verifies_and_any_mutation_is_refused(
                secret in proptest::collection::vec(any::<u8>(), 1..64),
                body in proptest::collection::vec(any::<u8>(), 0..512),
                skew in -300i64..=300,
                flip in any::<proptest::sample::Index>(),
                bit in 0u8..8,
                other_ts in -300i64..=300,
                sig_pos in any::<proptest::sample::Index>(),
            ) {
                let ts = (NOW + skew).to_string();
                let sig = sign(&secret, &ts, &body);
                prop_assert!(verify(&secret, Some(&ts), Some(&sig), &body, NOW).is_ok());

                // Any flipped bit of the body.
                if !body.is_empty() {
                    let mut tampered = body.clone();
                    let i = flip.index(tampered.len());
                    tampered[i] ^= 1 << bit;
                    prop_assert!(verify(&secret, Some(&ts), Some(&sig), &tampered, NOW).is_err());
                }
                // A byte more or less.
                let mut longer = body.clone();
                longer.push(b' ');
                prop_assert!(verify(&secret, Some(&ts), Some(&sig), &longer, NOW).is_err());
                // Another timestamp, even inside the window.
                let other = (NOW + other_ts).to_string();
                if other != ts {
                    prop_assert!(verify(&secret, Some(&other), Some(&sig), &body, NOW).is_err());
                }
                // Any changed character of the signature.
                let mut chars: Vec<char> = sig.chars().collect();
                let i = sig_pos.index(chars.len());
                chars[i] = if chars[i] == '0' { '1' } else { '0' };
                let forged: String = chars.into_iter().collect();
                prop_assert!(verify(&secret, Some(&ts), Some(&forged), &body, NOW).is_err());
                // Another secret.
                let mut other_secret = secret.clone();
                other_secret[0] ^= 1;
                prop_assert!(verify(&other_secret, Some(&ts), Some(&sig), &body, NOW).is_err());
            }
        }
    }
}
