//! API keys and per-run job tokens.
//!
//! An API key looks like `pp_<8-char id><32-char secret><6-char checksum>` (base62). Only its
//! SHA-256 is stored; the 8-char id finds the row and the hashes are compared in constant time.
//! The checksum lets secret scanners recognise a key without asking the server.
//!
//! A run token (`ppr_…`) is an HMAC over the run id and attempt with a server secret kept in the
//! store, so the controller can hand it to a job without storing it, and the API can verify it
//! without a lookup. It acts on its own run only, and only for the attempt it was made for.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub(crate) fn random_base62(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
}

fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    digest
        .iter()
        .take(6)
        .map(|b| BASE62[(*b as usize) % 62] as char)
        .collect()
}

/// A freshly generated API key: the secret (shown once) and what is stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The whole key; shown once, never stored.
    pub key: pushpool_provider::Secret,
    /// Public lookup id.
    pub prefix: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
}

/// Generates a new API key.
pub fn generate_api_key() -> GeneratedKey {
    let prefix = random_base62(8);
    let body = format!("pp_{prefix}{}", random_base62(32));
    let key = format!("{body}{}", checksum(&body));
    GeneratedKey {
        hash: hash_key(&key),
        prefix,
        key: pushpool_provider::Secret::new(key),
    }
}

/// SHA-256 hex of a key.
pub fn hash_key(key: &str) -> String {
    hex_encode(&Sha256::digest(key.as_bytes()))
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a presented key into its lookup prefix if it is well-formed (prefix, length, checksum).
pub fn key_prefix(key: &str) -> Option<&str> {
    if key.len() != 3 + 8 + 32 + 6 || !key.starts_with("pp_") || !key.is_ascii() {
        return None;
    }
    let (body, sum) = key.split_at(key.len() - 6);
    if checksum(body) != sum {
        return None;
    }
    Some(&key[3..11])
}

/// Constant-time comparison of two hex hashes.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Issues and checks run tokens with the server secret.
#[derive(Clone)]
pub struct RunTokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for RunTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunTokens([redacted])")
    }
}

/// The store setting holding the run-token secret.
pub const RUN_TOKEN_SECRET_SETTING: &str = "run_token_secret";

impl RunTokens {
    /// Uses this secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        RunTokens {
            secret: secret.into(),
        }
    }

    /// A new random secret, hex.
    pub fn new_secret() -> String {
        let bytes: [u8; 32] = rand::random();
        hex_encode(&bytes)
    }

    fn mac(&self, run_id: Uuid, attempt: i64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"0").expect("hmac"));
        mac.update(run_id.as_bytes());
        mac.update(&attempt.to_be_bytes());
        hex_encode(&mac.finalize().into_bytes())
    }

    /// The token for one attempt of one run.
    pub fn issue(&self, run_id: Uuid, attempt: i64) -> String {
        format!(
            "ppr_{}_{}_{}",
            run_id.simple(),
            attempt,
            self.mac(run_id, attempt)
        )
    }

    /// The run and attempt a token was issued for, if it is genuine.
    pub fn verify(&self, token: &str) -> Option<(Uuid, i64)> {
        let rest = token.strip_prefix("ppr_")?;
        let mut parts = rest.splitn(3, '_');
        let run_id = Uuid::parse_str(parts.next()?).ok()?;
        let attempt: i64 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        let expected = self.mac(run_id, attempt);
        hashes_match(mac, &expected).then_some((run_id, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_roundtrip_and_reject_tampering() {
        let k = generate_api_key();
        let key = k.key.expose();
        assert!(key.starts_with("pp_"));
        assert_eq!(key_prefix(key), Some(k.prefix.as_str()));
        assert!(hashes_match(&hash_key(key), &k.hash));
        let mut tampered = key.to_string();
        tampered.replace_range(20..21, if &key[20..21] == "a" { "b" } else { "a" });
        assert_eq!(
            key_prefix(&tampered),
            None,
            "checksum catches a changed character"
        );
        assert_eq!(key_prefix("Bearer nonsense"), None);
    }

    #[test]
    fn run_tokens_are_bound_to_run_and_attempt() {
        let t = RunTokens::new(b"secret".to_vec());
        let id = Uuid::now_v7();
        let token = t.issue(id, 2);
        assert_eq!(t.verify(&token), Some((id, 2)));
        let other = RunTokens::new(b"other".to_vec());
        assert_eq!(other.verify(&token), None);
        let forged = token.replace("_2_", "_3_");
        assert_eq!(t.verify(&forged), None);
    }
}
