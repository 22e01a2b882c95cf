//! Encryption at rest of encrypted columns.
//!
//! One 32-byte master key comes from the configuration ([`crate::orm::OrmConfig::encryption_key`]). Three subkeys are
//! derived from it, each as the first 32 bytes of AES-256-GCM-SIV(master, nonce = label, 32 zero bytes) — a PRF of the
//! label under the master key — so the master key itself never encrypts column data.
//!
//! - **Randomized** (columns that are never queried by value): AES-256-GCM under subkey R with a fresh random 96-bit nonce
//!   per value. Stored as `01 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`. Equal plaintexts give different ciphertexts.
//! - **Deterministic** (encrypted columns that are partition keys or indexed, so that equality lookups work):
//!   AES-256-GCM-SIV under subkey D, with a synthetic nonce = the first 12 bytes of the GCM-SIV tag of (column, plaintext)
//!   under subkey N. Stored as `02 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`. Equal plaintexts of the same column give equal
//!   bytes (that is the point, and all it reveals); the nonce is never fixed, and GCM-SIV stays safe even so.
//!
//! The associated data of both schemes is `table.column`, so a value copied into another column does not decrypt.
//! A wrong key, or tampered bytes, fail authentication: [`CryptoError`] names the column and says so.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::Aes256GcmSiv;

const RANDOMIZED: u8 = 1;
const DETERMINISTIC: u8 = 2;
const NONCE_BYTES: usize = 12;

/// Encryption failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The stored bytes do not authenticate under the configured key.
    #[error(
        "cannot decrypt column `{column}`: wrong encryption key or corrupted data (check SHARDCAST_ORM_ENCRYPTION_KEY)"
    )]
    WrongKeyOrCorrupt {
        /// `table.column`.
        column: String,
    },
    /// The configured key is not 32 bytes of base64 or 64 hex digits.
    #[error("invalid encryption key: {0}")]
    InvalidKey(String),
    /// The cipher refused the input (too long).
    #[error("cannot encrypt column `{column}`")]
    Encrypt {
        /// `table.column`.
        column: String,
    },
}

/// The column cipher. Cheap to clone; holds the derived subkeys.
#[derive(Clone)]
pub struct Cipher {
    randomized: Aes256Gcm,
    deterministic: Aes256GcmSiv,
    nonce_prf: Aes256GcmSiv,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher { keys: <redacted> }")
    }
}

fn derive(master: &Aes256GcmSiv, label: &[u8; NONCE_BYTES]) -> Result<[u8; 32], CryptoError> {
    let nonce = aes_gcm_siv::Nonce::from(*label);
    let out = master
        .encrypt(
            &nonce,
            Payload {
                msg: &[0u8; 32],
                aad: b"shardcast orm key derivation",
            },
        )
        .map_err(|_| CryptoError::InvalidKey("key derivation failed".into()))?;
    let bytes = out
        .get(..32)
        .ok_or_else(|| CryptoError::InvalidKey("key derivation failed".into()))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(bytes);
    Ok(key)
}

impl Cipher {
    /// Builds the cipher from the 32-byte master key.
    pub fn new(master_key: &[u8; 32]) -> Result<Self, CryptoError> {
        let master = Aes256GcmSiv::new(&(*master_key).into());
        let r = derive(&master, b"shardcast-r1")?;
        let d = derive(&master, b"shardcast-d1")?;
        let n = derive(&master, b"shardcast-n1")?;
        Ok(Self {
            randomized: Aes256Gcm::new(&r.into()),
            deterministic: Aes256GcmSiv::new(&d.into()),
            nonce_prf: Aes256GcmSiv::new(&n.into()),
        })
    }

    /// Parses a key given as base64 (standard or URL-safe, padded or not) of 32 bytes, or as 64 hex digits.
    pub fn parse_key(text: &str) -> Result<[u8; 32], CryptoError> {
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| CryptoError::InvalidKey(e.to_string()))?
        } else {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| CryptoError::InvalidKey("neither base64 nor 64 hex digits".into()))?
        };
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| CryptoError::InvalidKey(format!("{} bytes, expected 32", bytes.len())))
    }

    /// Encrypts `plain` for column `column` (`table.column`), deterministically or not.
    pub fn encrypt(
        &self,
        column: &str,
        plain: &[u8],
        deterministic: bool,
    ) -> Result<Vec<u8>, CryptoError> {
        let err = || CryptoError::Encrypt {
            column: column.to_string(),
        };
        let aad = column.as_bytes();
        let (tag, nonce_bytes, ct) = if deterministic {
            let mut prf_input = Vec::with_capacity(aad.len() + 1 + plain.len());
            prf_input.extend_from_slice(aad);
            prf_input.push(0);
            prf_input.extend_from_slice(plain);
            let zero = aes_gcm_siv::Nonce::from([0u8; NONCE_BYTES]);
            let mac = self
                .nonce_prf
                .encrypt(
                    &zero,
                    Payload {
                        msg: &[],
                        aad: &prf_input,
                    },
                )
                .map_err(|_| err())?;
            let mut n = [0u8; NONCE_BYTES];
            n.copy_from_slice(&mac[..NONCE_BYTES]);
            let ct = self
                .deterministic
                .encrypt(&aes_gcm_siv::Nonce::from(n), Payload { msg: plain, aad })
                .map_err(|_| err())?;
            (DETERMINISTIC, n, ct)
        } else {
            let n: [u8; NONCE_BYTES] = rand::random();
            let ct = self
                .randomized
                .encrypt(&aes_gcm::Nonce::from(n), Payload { msg: plain, aad })
                .map_err(|_| err())?;
            (RANDOMIZED, n, ct)
        };
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + ct.len());
        out.push(tag);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts bytes made by [`Cipher::encrypt`] for the same column.
    pub fn decrypt(&self, column: &str, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let err = || CryptoError::WrongKeyOrCorrupt {
            column: column.to_string(),
        };
        if stored.len() < 1 + NONCE_BYTES {
            return Err(err());
        }
        let mut n = [0u8; NONCE_BYTES];
        n.copy_from_slice(&stored[1..1 + NONCE_BYTES]);
        let payload = Payload {
            msg: &stored[1 + NONCE_BYTES..],
            aad: column.as_bytes(),
        };
        match stored[0] {
            RANDOMIZED => self
                .randomized
                .decrypt(&aes_gcm::Nonce::from(n), payload)
                .map_err(|_| err()),
            DETERMINISTIC => self
                .deterministic
                .decrypt(&aes_gcm_siv::Nonce::from(n), payload)
                .map_err(|_| err()),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomized_values_differ_and_round_trip() {
        let c = Cipher::new(&[7; 32]).expect("cipher");
        let a = c.encrypt("t.c", b"secret", false).expect("encrypts");
        let b = c.encrypt("t.c", b"secret", false).expect("encrypts");
        assert_ne!(a, b);
        assert_eq!(c.decrypt("t.c", &a).expect("decrypts"), b"secret");
        assert!(!a.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn deterministic_values_are_equal_per_column_and_round_trip() {
        let c = Cipher::new(&[7; 32]).expect("cipher");
        let a = c.encrypt("t.c", b"secret", true).expect("encrypts");
        let b = c.encrypt("t.c", b"secret", true).expect("encrypts");
        let other = c.encrypt("t.d", b"secret", true).expect("encrypts");
        let different = c.encrypt("t.c", b"secreT", true).expect("encrypts");
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_ne!(a[1..13], different[1..13], "nonce depends on the plaintext");
        assert_eq!(c.decrypt("t.c", &a).expect("decrypts"), b"secret");
    }

    #[test]
    fn wrong_key_wrong_column_and_garbage_are_clear_errors() {
        let c = Cipher::new(&[7; 32]).expect("cipher");
        let other = Cipher::new(&[8; 32]).expect("cipher");
        for det in [false, true] {
            let a = c.encrypt("t.c", b"secret", det).expect("encrypts");
            assert_eq!(
                other.decrypt("t.c", &a),
                Err(CryptoError::WrongKeyOrCorrupt {
                    column: "t.c".into()
                })
            );
            assert!(c.decrypt("t.d", &a).is_err());
        }
        for n in 0..20 {
            assert!(c.decrypt("t.c", &vec![1; n]).is_err());
        }
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(Cipher::parse_key(&hex).expect("hex")[31], 0xff);
        let b64 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(Cipher::parse_key(b64).expect("base64"), [0; 32]);
        assert!(Cipher::parse_key("short").is_err());
    }
}
