//! Webhook signatures: the one scheme every Aviary service signs its outgoing HTTP posts with
//! (the analyzer's gates and hooks, the notifier's `webhook` providers and `event` webhooks),
//! and the check a receiver runs on them.
//!
//! ```text
//! X-Aviary-Signature: t=1767225600,kid=5e884898,v1=<hex HMAC-SHA256(key, "1767225600." + body)>
//! ```
//!
//! - `t` is the signing time in Unix seconds. It is inside the MAC, so a receiver that rejects
//!   a `t` outside its window ([`DEFAULT_TOLERANCE`]) cannot be fed a captured request again
//!   later: replay protection without receiver state.
//! - `kid` names the key, so a receiver can hold the old and the new key while a key is
//!   rotated. It defaults to the first 8 hex characters of the key's SHA-256
//!   ([`SigningKey::default_id`]), which tells keys apart without revealing them.
//! - `v1` is the MAC of `"<t>.<body>"`; the version names the scheme, so a later one can be
//!   sent beside it.
//!
//! A sender signs each attempt afresh ([`SigningKey::sign_now`]): a retry minutes later carries
//! a new `t`. A signed request must not follow redirects, or the signature goes to whoever the
//! redirect names; both services' HTTP clients follow none.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Aviary-Signature";

/// How far a signature's `t` may be from the receiver's clock, either way. Five minutes covers
/// ordinary clock skew and the time a post spends in flight, and bounds the replay window.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Length of a default key id: 8 hex characters (32 bits) tell a handful of keys apart.
const DEFAULT_ID_LEN: usize = 8;

/// Longest key id accepted; it travels in every request.
const MAX_ID_LEN: usize = 64;

/// Why a key or a signature was refused. Comparable, so tests assert on the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A key id that cannot travel in the header (empty, too long, or with characters other
    /// than letters, digits, `.`, `_`, `-`).
    #[error("key id {id:?}: use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-'")]
    InvalidKeyId {
        /// The id given.
        id: String,
    },
    /// An empty signing key.
    #[error("the signing key is empty")]
    EmptyKey,
    /// The header does not read `t=<seconds>,kid=<id>,v1=<hex>`.
    #[error("malformed signature header: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The header names a key the receiver does not hold.
    #[error("unknown key id {kid:?}")]
    UnknownKey {
        /// The id in the header.
        kid: String,
    },
    /// The signing time is outside the receiver's window: a replay, or a badly skewed clock.
    #[error("signed at {signed_at}, more than {tolerance_secs}s from now ({now})")]
    Stale {
        /// `t` from the header.
        signed_at: u64,
        /// The receiver's clock, Unix seconds.
        now: u64,
        /// The window, seconds.
        tolerance_secs: u64,
    },
    /// The MAC does not match the body and time under the named key.
    #[error("signature does not match")]
    Mismatch,
}

/// A key that signs (and verifies) request bodies, with its id. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    id: String,
    key: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

impl SigningKey {
    /// A key with id `id`, or [`SigningKey::default_id`] of the key when `None`.
    ///
    /// # Errors
    /// [`SignatureError::EmptyKey`] for an empty key; [`SignatureError::InvalidKeyId`] for an
    /// id that cannot travel in the header.
    pub fn new(key: impl Into<Vec<u8>>, id: Option<&str>) -> Result<Self, SignatureError> {
        let key = key.into();
        if key.is_empty() {
            return Err(SignatureError::EmptyKey);
        }
        let id = match id {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= MAX_ID_LEN
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(SignatureError::InvalidKeyId { id: id.to_owned() });
                }
                id.to_owned()
            }
            None => Self::default_id(&key),
        };
        Ok(Self { id, key })
    }

    /// The id of `key` when none is configured: the first 8 hex characters of its SHA-256.
    pub fn default_id(key: &[u8]) -> String {
        let mut id = hex(&Sha256::digest(key));
        id.truncate(DEFAULT_ID_LEN);
        id
    }

    /// The key's id, as sent in `kid`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The header value signing `body` at `signed_at` (Unix seconds).
    pub fn sign(&self, signed_at: u64, body: &[u8]) -> String {
        let mac = hex(&self.mac(signed_at, body).finalize().into_bytes());
        format!("t={signed_at},kid={},v1={mac}", self.id)
    }

    /// The header value signing `body` now.
    pub fn sign_now(&self, body: &[u8]) -> String {
        self.sign(unix_seconds(crate::clock::system_now()), body)
    }

    fn mac(&self, signed_at: u64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(signed_at.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// What a receiver checks signatures with: the keys it holds and its window.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<SigningKey>,
    tolerance: Duration,
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The id of the key that signed.
    pub kid: String,
    /// When it was signed, Unix seconds.
    pub signed_at: u64,
}

impl Verifier {
    /// A verifier holding `keys` (several while a key is rotated), with
    /// [`DEFAULT_TOLERANCE`].
    pub fn new(keys: impl IntoIterator<Item = SigningKey>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Sets the window a signing time must fall in, either side of now.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks `header` (the value of [`SIGNATURE_HEADER`]) against `body` at the current time.
    ///
    /// # Errors
    /// As [`Verifier::verify_at`].
    pub fn verify(&self, header: &str, body: &[u8]) -> Result<Verified, SignatureError> {
        self.verify_at(header, body, crate::clock::system_now())
    }

    /// Checks `header` against `body` as of `now`: the key id must be one held, the time
    /// within the window, and the MAC must match (compared in constant time).
    ///
    /// # Errors
    /// [`SignatureError::Malformed`], [`SignatureError::UnknownKey`],
    /// [`SignatureError::Stale`] or [`SignatureError::Mismatch`], checked in that order.
    pub fn verify_at(
        &self,
        header: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        let parsed = Parsed::parse(header)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == parsed.kid)
            .ok_or_else(|| SignatureError::UnknownKey {
                kid: parsed.kid.to_owned(),
            })?;
        let now = unix_seconds(now);
        let tolerance_secs = self.tolerance.as_secs();
        if now.abs_diff(parsed.t) > tolerance_secs {
            return Err(SignatureError::Stale {
                signed_at: parsed.t,
                now,
                tolerance_secs,
            });
        }
        key.mac(parsed.t, body)
            .verify_slice(&parsed.v1)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(Verified {
            kid: key.id.clone(),
            signed_at: parsed.t,
        })
    }
}

/// The fields of a header value.
struct Parsed<'a> {
    t: u64,
    kid: &'a str,
    v1: Vec<u8>,
}

impl<'a> Parsed<'a> {
    fn parse(header: &'a str) -> Result<Self, SignatureError> {
        let malformed = |reason: &str| SignatureError::Malformed {
            reason: reason.to_owned(),
        };
        let (mut t, mut kid, mut v1) = (None, None, None);
        for part in header.trim().split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| malformed("expected name=value pairs"))?;
            let slot = match name {
                "t" => &mut t,
                "kid" => &mut kid,
                "v1" => &mut v1,
                // Later scheme versions may be sent beside v1.
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(malformed(&format!("`{name}` given twice")));
            }
        }
        let t = t
            .ok_or_else(|| malformed("no `t`"))?
            .parse::<u64>()
            .map_err(|_| malformed("`t` is not Unix seconds"))?;
        let kid = kid.ok_or_else(|| malformed("no `kid`"))?;
        let v1 = unhex(v1.ok_or_else(|| malformed("no `v1`"))?)
            .ok_or_else(|| malformed("`v1` is not hex"))?;
        Ok(Self { t, kid, v1 })
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_767_225_600;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn key() -> SigningKey {
        SigningKey::new("Jefe", Some("k1")).unwrap()
    }

    #[test]
    fn mac_is_hmac_sha256_of_time_dot_body() {
        // A receiver in any language recomputes it with a plain HMAC over "<t>.<body>".
        let key = SigningKey::new("Jefe", Some("k1")).unwrap();
        let mac = hex(&key
            .mac(0, b"what do ya want for nothing?")
            .finalize()
            .into_bytes());
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        plain.update(b"0.what do ya want for nothing?");
        assert_eq!(mac, hex(&plain.finalize().into_bytes()));
        assert_eq!(
            key.sign(T, b"{}"),
            format!(
                "t={T},kid=k1,v1={}",
                hex(&key.mac(T, b"{}").finalize().into_bytes())
            )
        );
    }

    #[test]
    fn default_key_id_is_a_sha256_prefix() {
        // SHA-256("password") = 5e884898da28…
        let key = SigningKey::new("password", None).unwrap();
        assert_eq!(key.id(), "5e884898");
        assert!(!format!("{key:?}").contains("password"));
    }

    #[test]
    fn bad_keys_and_ids_are_refused() {
        assert_eq!(SigningKey::new("", None), Err(SignatureError::EmptyKey));
        for id in ["", "a,b", "a=b", "a b", &"x".repeat(65)] {
            assert_eq!(
                SigningKey::new("k", Some(id)),
                Err(SignatureError::InvalidKeyId { id: id.to_owned() }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn a_fresh_signature_verifies() {
        let header = key().sign(T, b"body");
        let verified = Verifier::new([key()])
            .verify_at(&header, b"body", at(T + 10))
            .unwrap();
        assert_eq!(
            verified,
            Verified {
                kid: "k1".into(),
                signed_at: T
            }
        );
        let now = key().sign_now(b"body");
        assert!(Verifier::new([key()]).verify(&now, b"body").is_ok());
    }

    #[test]
    fn an_old_or_future_signature_is_a_replay() {
        let header = key().sign(T, b"body");
        let verifier = Verifier::new([key()]);
        assert!(verifier.verify_at(&header, b"body", at(T + 300)).is_ok());
        assert_eq!(
            verifier.verify_at(&header, b"body", at(T + 301)),
            Err(SignatureError::Stale {
                signed_at: T,
                now: T + 301,
                tolerance_secs: 300
            })
        );
        assert!(matches!(
            verifier.verify_at(&header, b"body", at(T - 301)),
            Err(SignatureError::Stale { .. })
        ));
        let short = verifier.with_tolerance(Duration::from_secs(5));
        assert!(matches!(
            short.verify_at(&header, b"body", at(T + 6)),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn tampering_is_caught() {
        let header = key().sign(T, b"body");
        let verifier = Verifier::new([key()]);
        assert_eq!(
            verifier.verify_at(&header, b"bodY", at(T)),
            Err(SignatureError::Mismatch)
        );
        // Moving the time forward to pass the window breaks the MAC.
        let moved = header.replace(&format!("t={T}"), &format!("t={}", T + 1000));
        assert_eq!(
            verifier.verify_at(&moved, b"body", at(T + 1000)),
            Err(SignatureError::Mismatch)
        );
        let other = SigningKey::new("other", Some("k1")).unwrap();
        assert_eq!(
            verifier.verify_at(&other.sign(T, b"body"), b"body", at(T)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_key_id_picks_the_key() {
        let old = SigningKey::new("old", Some("2025")).unwrap();
        let new = SigningKey::new("new", Some("2026")).unwrap();
        let verifier = Verifier::new([old.clone(), new.clone()]);
        assert_eq!(
            verifier
                .verify_at(&old.sign(T, b"x"), b"x", at(T))
                .unwrap()
                .kid,
            "2025"
        );
        assert_eq!(
            verifier
                .verify_at(&new.sign(T, b"x"), b"x", at(T))
                .unwrap()
                .kid,
            "2026"
        );
        let stranger = SigningKey::new("new", Some("2027")).unwrap();
        assert_eq!(
            verifier.verify_at(&stranger.sign(T, b"x"), b"x", at(T)),
            Err(SignatureError::UnknownKey { kid: "2027".into() })
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let verifier = Verifier::new([key()]);
        for header in [
            "",
            "sha256=abcd",
            "t=1,kid=k1",
            "t=x,kid=k1,v1=00",
            "t=1,kid=k1,v1=0g",
            "t=1,kid=k1,v1=abc",
            "t=1,t=2,kid=k1,v1=00",
        ] {
            assert!(
                matches!(
                    verifier.verify_at(header, b"", at(1)),
                    Err(SignatureError::Malformed { .. })
                ),
                "{header:?}"
            );
        }
        // An unknown scheme beside v1 is ignored.
        let header = format!("{},v2=zz", key().sign(T, b"b"));
        assert!(verifier.verify_at(&header, b"b", at(T)).is_ok());
    }
}
