//! The room-token key derived from the access-token secret (HKDF-SHA256, RFC 5869, with a fixed label), so room
//! tokens survive restarts and agree across every node that shares the access-token secret, while staying distinct
//! key material: a room token is never a valid access token and knowing one key does not give the other.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::realtime::auth::Secret;

/// HKDF salt and info of the room-token key. Changing them changes every derived key (all room tokens in flight die).
pub const ROOM_TOKEN_KEY_SALT: &[u8] = b"shardcast/hkdf-salt/v1";
/// See [`ROOM_TOKEN_KEY_SALT`].
pub const ROOM_TOKEN_KEY_INFO: &[u8] = b"shardcast room-token key v1";

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    for p in parts {
        mac.update(p);
    }
    let out = mac.finalize().into_bytes();
    let mut a = [0u8; 32];
    a.copy_from_slice(&out);
    a
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC-SHA256 takes keys of every length (RFC 2104), so this is never reached.
    std::process::abort()
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `len` bytes (at most 255 * 32).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let prk = hmac_sha256(salt, &[ikm]);
    let len = len.min(255 * 32);
    let mut out = Vec::with_capacity(len);
    let mut t: Vec<u8> = Vec::new();
    let mut counter = 1u8;
    while out.len() < len {
        t = hmac_sha256(&prk, &[&t, info, &[counter]]).to_vec();
        let take = (len - out.len()).min(32);
        out.extend_from_slice(&t[..take]);
        counter = counter.wrapping_add(1);
    }
    out
}

/// The room-token key of an HS256 access-token secret: 32 bytes of HKDF-SHA256 with the fixed label.
pub fn room_token_key(access_secret: &Secret) -> Secret {
    Secret::new(hkdf_sha256(
        ROOM_TOKEN_KEY_SALT,
        access_secret.expose(),
        ROOM_TOKEN_KEY_INFO,
        32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn rfc5869_test_case_1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        assert_eq!(
            hex(&hkdf_sha256(&salt, &ikm, &info, 42)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn the_room_key_is_stable_and_distinct_from_the_access_secret() {
        let s = Secret::from("an access-token secret of 32 bytes..");
        let a = room_token_key(&s);
        let b = room_token_key(&Secret::from("an access-token secret of 32 bytes.."));
        assert_eq!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a.expose(), s.expose());
        assert_ne!(
            a.expose(),
            room_token_key(&Secret::from("another access-token secret, 32 b")).expose()
        );
    }
}
