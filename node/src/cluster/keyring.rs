//! The cluster keyring: authenticated encryption of gossip packets.
//!
//! foca sends its SWIM packets in the clear; every datagram we put on the wire is
//! sealed with ChaCha20-Poly1305 under the cluster key instead:
//! `version (1) | key id (4) | nonce (12) | ciphertext | tag (16)`, the first five
//! bytes bound as associated data. The key id (the first four bytes of the key's
//! SHA-256) lets a receiver pick the key without trying each one.
//!
//! Rotation without downtime: the keyring file lists keys one per line, the first
//! one encrypts and every one decrypts. Add the new key second on every node, then
//! move it first everywhere, then drop the old one.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Format version of a sealed packet.
const SEALED_VERSION: u8 = 1;
/// Bytes a sealed packet adds around its plaintext.
pub const OVERHEAD: usize = 1 + 4 + NONCE_LEN + 16;
/// Length of a key, bytes.
pub const KEY_LEN: usize = 32;

/// Why a packet could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, or a format version this build does not know.
    #[error("not a sealed packet")]
    Malformed,
    /// Sealed under a key this node does not have.
    #[error("unknown key")]
    UnknownKey,
    /// The tag does not match: forged, damaged, or sealed under another key with the
    /// same id.
    #[error("authentication failed")]
    Forged,
}

/// Keys for sealing and opening gossip packets; the first one seals.
pub struct Keyring {
    keys: Vec<([u8; 4], LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring from raw keys, the sealing key first.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("the keyring holds no key".into());
        }
        let keys = keys
            .iter()
            .map(|k| {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, k)
                    .map_err(|_| "invalid key".to_string())?;
                Ok((key_id(k), LessSafeKey::new(unbound)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Reads a keyring file: one hex key per line, `#` comments and blank lines
    /// ignored, the first key seals.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Self::new(&parse(&text)?)
    }

    /// Seals `plain` under the first key.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        // Random 96-bit nonces: the chance of a repeat stays negligible for far
        // more packets than a key will ever seal before it is rotated.
        self.rng
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        let header: [u8; 5] = out[..5].try_into().expect("five header bytes");
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut body,
        )
        .expect("a packet is far below the AEAD size limit");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed packet; the plaintext is returned in a new buffer.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD || sealed[0] != SEALED_VERSION {
            return Err(OpenError::Malformed);
        }
        let id: [u8; 4] = sealed[1..5].try_into().expect("four id bytes");
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or(OpenError::UnknownKey)?;
        let nonce: [u8; NONCE_LEN] = sealed[5..5 + NONCE_LEN].try_into().expect("nonce bytes");
        let header: [u8; 5] = sealed[..5].try_into().expect("five header bytes");
        let mut body = sealed[5 + NONCE_LEN..].to_vec();
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut body,
            )
            .map_err(|_| OpenError::Forged)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

fn key_id(key: &[u8]) -> [u8; 4] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    digest.as_ref()[..4].try_into().expect("four bytes")
}

/// Parses keyring text (see [`Keyring::load`]).
pub fn parse(text: &str) -> Result<Vec<[u8; KEY_LEN]>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(decode_hex(line).ok_or_else(|| {
            format!(
                "line {}: expected {} hex digits (a {KEY_LEN}-byte key)",
                n + 1,
                KEY_LEN * 2
            )
        })?);
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != KEY_LEN * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random key, as a keyring file line.
pub fn generate_key_line() -> String {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the system random source works");
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: &str) -> [u8; KEY_LEN] {
        parse(line).unwrap()[0]
    }

    #[test]
    fn sealed_packets_open_and_hide_their_contents() {
        let ring = Keyring::new(&[key(&generate_key_line())]).unwrap();
        let plain = b"SWIM ping from node-1".to_vec();
        let sealed = ring.seal(&plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(4).any(|w| w == b"SWIM"), "plaintext leaked");
        assert_eq!(ring.open(&sealed).unwrap(), plain);
        assert_ne!(ring.seal(&plain), sealed, "nonces differ per packet");
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let ring = Keyring::new(&[key(&generate_key_line())]).unwrap();
        let sealed = ring.seal(b"membership update");
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(ring.open(&bad).is_err(), "bit {bit} flipped and accepted");
        }
    }

    #[test]
    fn rotation_old_and_new_keys_both_open_and_unknown_keys_are_named() {
        let (old, new) = (key(&generate_key_line()), key(&generate_key_line()));
        let before = Keyring::new(&[old]).unwrap();
        let during = Keyring::new(&[new, old]).unwrap();
        let stranger = Keyring::new(&[key(&generate_key_line())]).unwrap();
        assert_eq!(during.open(&before.seal(b"a")).unwrap(), b"a");
        assert_eq!(
            during.open(&during.seal(b"b")).unwrap(),
            b"b",
            "seals with the new key"
        );
        assert_eq!(before.open(&during.seal(b"c")), Err(OpenError::UnknownKey));
        assert_eq!(
            stranger.open(&before.seal(b"d")),
            Err(OpenError::UnknownKey)
        );
        assert_eq!(before.open(b"short"), Err(OpenError::Malformed));
    }

    #[test]
    fn keyring_files_are_checked() {
        let line = generate_key_line();
        let text = format!("# cluster key\n\n{line}\n");
        assert_eq!(parse(&text).unwrap().len(), 1);
        assert!(parse("abc").unwrap_err().contains("line 1"));
        assert!(parse(&format!("{line}\nzz{}", &line[2..]))
            .unwrap_err()
            .contains("line 2"));
        assert!(Keyring::new(&[]).is_err());
    }
}
