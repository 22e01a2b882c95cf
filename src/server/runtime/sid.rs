//! Session ids and socket ids: bearer credentials, so they come from a CSPRNG.
//!
//! An id is the owner shard's index as two hex digits followed by [`SID_RANDOM_BYTES`] bytes (128 bits) from
//! `rand`'s thread-local generator (ChaCha12, seeded from the operating system and reseeded periodically), in
//! URL-safe base64 without padding: 24 characters. Nothing in it is derived from a counter, the time or the pid, so
//! knowing any number of ids tells nothing about the others.

use std::borrow::Borrow;
use std::fmt;
use std::rc::Rc;

use base64::Engine as _;

/// Random bytes in every id (128 bits; the issue asks for at least 120).
pub const SID_RANDOM_BYTES: usize = 16;
/// Length of every id: two hex digits of shard index plus the base64url of the random bytes.
pub const SID_LEN: usize = 2 + (SID_RANDOM_BYTES * 4).div_ceil(3);

/// An Engine.IO session id (also used for Socket.IO socket ids). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(Rc<str>);

// The generator must be a CSPRNG; this fails to compile if `rand` ever changes that.
const _: fn() = || {
    fn is_crypto<R: rand::CryptoRng>() {}
    is_crypto::<rand::rngs::ThreadRng>();
};

impl Sid {
    /// A fresh random id owned by shard `shard` (0..=255).
    pub fn random(shard: usize) -> Sid {
        let mut bytes = [0u8; SID_RANDOM_BYTES];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
        let mut s = String::with_capacity(SID_LEN);
        s.push_str(&format!("{:02x}", shard & 0xff));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut s);
        debug_assert_eq!(s.len(), SID_LEN);
        Sid(Rc::from(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text of the id.
    pub fn to_rc(&self) -> Rc<str> {
        self.0.clone()
    }

    /// The shard index encoded in a client-supplied id, if the id has the shape of one of ours (length and
    /// alphabet); `None` otherwise. Says nothing about whether such a session exists.
    pub fn owner_of(text: &str) -> Option<usize> {
        if text.len() != SID_LEN {
            return None;
        }
        let (hex, rest) = text.split_at_checked(2)?;
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        if !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        usize::from_str_radix(hex, 16).ok()
    }
}

impl std::ops::Deref for Sid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Sid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Sid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.0)
    }
}

impl From<Sid> for Rc<str> {
    fn from(s: Sid) -> Rc<str> {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const N: usize = 100_000;

    fn ids() -> Vec<Sid> {
        (0..N).map(|_| Sid::random(3)).collect()
    }

    #[test]
    fn shape_and_owner() {
        let s = Sid::random(0x2a);
        assert_eq!(s.len(), SID_LEN);
        assert!(s.starts_with("2a"));
        assert_eq!(Sid::owner_of(&s), Some(0x2a));
        assert_eq!(Sid::owner_of("2a"), None);
        assert_eq!(Sid::owner_of(&format!("{}!", &s[..SID_LEN - 1])), None);
        assert_eq!(Sid::owner_of(&format!("zz{}", &s[2..])), None);
    }

    #[test]
    fn hundred_thousand_ids_never_repeat() {
        let ids = ids();
        let set: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
        assert_eq!(set.len(), N);
        // No repeated random part either (the shard prefix is the only shared structure).
        let tails: HashSet<&str> = ids.iter().map(|s| &s[2..]).collect();
        assert_eq!(tails.len(), N);
    }

    /// Decode the random part back to bytes.
    fn random_bytes(s: &Sid) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&s[2..])
            .unwrap()
    }

    #[test]
    fn no_structure_per_position() {
        // For every bit of the random part: about half of the ids have it set (a counter or timestamp would fix its
        // high bits), and consecutive ids agree on it about half the time (a counter's low bits alternate, its high
        // bits repeat). With N = 100,000 the standard deviation is 158; 6 sigma is ~950.
        let ids = ids();
        let bytes: Vec<Vec<u8>> = ids.iter().map(random_bytes).collect();
        let tol = 950;
        for bit in 0..SID_RANDOM_BYTES * 8 {
            let get = |b: &[u8]| (b[bit / 8] >> (bit % 8)) & 1;
            let ones: usize = bytes.iter().map(|b| get(b) as usize).sum();
            assert!(
                ones.abs_diff(N / 2) < tol,
                "bit {bit}: set in {ones} of {N} ids"
            );
            let same = bytes
                .windows(2)
                .filter(|w| get(&w[0]) == get(&w[1]))
                .count();
            assert!(
                same.abs_diff((N - 1) / 2) < tol,
                "bit {bit}: consecutive ids agree {same} times of {}",
                N - 1
            );
        }
        // No byte position is an arithmetic sequence: differences of consecutive ids are spread over all values.
        for pos in 0..SID_RANDOM_BYTES {
            let mut diffs = [0usize; 256];
            for w in bytes.windows(2) {
                diffs[w[1][pos].wrapping_sub(w[0][pos]) as usize] += 1;
            }
            let max = *diffs.iter().max().unwrap();
            // expected ~391 per value; a counter puts everything on one value
            assert!(max < 600, "byte {pos}: one difference occurs {max} times");
        }
    }
}
