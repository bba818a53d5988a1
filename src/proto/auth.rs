//! The `switchboard/1` handshake's cryptography (PROTOCOL.md §3.2) and the
//! shared token.
//!
//! ```text
//! S: hello  nonce = hex(32 random bytes)
//! C: auth   nonce = hex(32 random bytes)
//!           mac   = hex(HMAC-SHA256(token, "switchboard/1 client " + server_nonce + " " + client_nonce))
//! S: ready  mac   = hex(HMAC-SHA256(token, "switchboard/1 server " + server_nonce + " " + client_nonce))
//! ```
//!
//! Each side proves it knows the token without sending it, each nonce keeps
//! an old exchange from being replayed, and the two labels keep one side's
//! MAC from being reflected back as the other's.
//!
//! With keys (PROTOCOL.md §3.7) each side signs a transcript instead, as
//! an SSH signature (`SSHSIG`, namespace [`KEY_NAMESPACE`]):
//!
//! ```text
//! switchboard/1 publickey ROLE        ROLE: client | server
//! server-nonce <64 hex>
//! client-nonce <64 hex>
//! host-key SHA256:<server's host key fingerprint>
//! client-key SHA256:<client's key fingerprint>
//! channel <64 hex: TLS exporter> | channel none
//! ```
//!
//! The host key line binds the client's signature to the server it
//! checked, and the TLS exporter (RFC 8446 §7.5, label
//! [`EXPORTER_LABEL`]) to this TLS session: a signature relayed to another
//! server, or through another TLS session, does not verify there.

use anyhow::bail;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. Its `Debug` never prints it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from text: surrounding whitespace trimmed, never empty.
    pub fn new(text: &str) -> anyhow::Result<Token> {
        let t = text.trim();
        if t.is_empty() {
            bail!("the token is empty");
        }
        Ok(Token(t.to_string()))
    }

    /// A fresh random token: 32 random bytes as 64 hex characters.
    pub fn generate() -> anyhow::Result<Token> {
        Ok(Token(hex(&random_bytes::<32>()?)))
    }

    /// The secret itself, for writing it to its file.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    fn mac(&self, label: &str, server_nonce: &str, client_nonce: &str) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(self.0.as_bytes())
            .unwrap_or_else(|_| unreachable!());
        m.update(format!("switchboard/1 {label} {server_nonce} {client_nonce}").as_bytes());
        m
    }

    /// A public name for the token: the first 8 hex digits of its SHA-256
    /// (for logs; reveals nothing usable about the token).
    pub fn id(&self) -> String {
        hex(self.digest().get(..4).unwrap_or_default())
    }

    /// The token's SHA-256: tells two tokens apart without keeping either.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The MAC the client sends.
    pub fn client_mac(&self, server_nonce: &str, client_nonce: &str) -> String {
        hex(&self
            .mac("client", server_nonce, client_nonce)
            .finalize()
            .into_bytes())
    }

    /// The MAC the server sends.
    pub fn server_mac(&self, server_nonce: &str, client_nonce: &str) -> String {
        hex(&self
            .mac("server", server_nonce, client_nonce)
            .finalize()
            .into_bytes())
    }

    /// Checks a client's MAC in constant time.
    pub fn verify_client(&self, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        self.verify("client", server_nonce, client_nonce, mac_hex)
    }

    /// Checks a server's MAC in constant time.
    pub fn verify_server(&self, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        self.verify("server", server_nonce, client_nonce, mac_hex)
    }

    fn verify(&self, label: &str, server_nonce: &str, client_nonce: &str, mac_hex: &str) -> bool {
        let Some(mac) = unhex(mac_hex) else {
            return false;
        };
        self.mac(label, server_nonce, client_nonce)
            .verify_slice(&mac)
            .is_ok()
    }
}

/// The namespace of every key signature of the handshake.
pub const KEY_NAMESPACE: &str = "switchboard/1";
/// The TLS exporter label that binds key signatures to a TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-switchboard/1 publickey";

/// Which side signs a key transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What each side of a key handshake signs (see the module header).
/// `channel`: the TLS exporter's 32 bytes, or none on plain TCP.
pub fn key_transcript(
    role: Role,
    server_nonce: &str,
    client_nonce: &str,
    host_key: &str,
    client_key: &str,
    channel: Option<&[u8; 32]>,
) -> Vec<u8> {
    let role = match role {
        Role::Client => "client",
        Role::Server => "server",
    };
    let channel = channel.map_or_else(|| "none".to_string(), |c| hex(c));
    format!(
        "switchboard/1 publickey {role}\nserver-nonce {server_nonce}\nclient-nonce {client_nonce}\n\
         host-key {host_key}\nclient-key {client_key}\nchannel {channel}\n"
    )
    .into_bytes()
}

/// A fresh nonce: 32 random bytes as 64 lower-case hex characters.
pub fn nonce() -> anyhow::Result<String> {
    Ok(hex(&random_bytes::<32>()?))
}

/// Whether `s` is a well-formed nonce (64 lower-case hex characters).
pub fn is_nonce(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_match_the_protocol_text() {
        // Computed independently: python3 -c "import hmac,hashlib;
        // print(hmac.new(b'secret', b'switchboard/1 client aa bb', hashlib.sha256).hexdigest())"
        let t = Token::new(" secret\n").unwrap();
        assert_eq!(
            t.client_mac("aa", "bb"),
            "aee6587d076108c6468de3fdf57784c13e9eedbd06d0544cde1954c2fbcc79bc"
        );
        assert!(t.verify_client("aa", "bb", &t.client_mac("aa", "bb")));
        assert!(!t.verify_client("aa", "bb", &t.server_mac("aa", "bb")));
        assert!(!t.verify_client("aa", "bb", "zz"));
        assert!(!t.verify_client("aa", "bb", ""));
        assert!(t.verify_server("aa", "bb", &t.server_mac("aa", "bb")));
    }

    #[test]
    fn key_transcripts_name_role_server_and_channel() {
        let t = key_transcript(Role::Client, "aa", "bb", "SHA256:h", "SHA256:c", None);
        assert_eq!(
            String::from_utf8(t).unwrap(),
            "switchboard/1 publickey client\nserver-nonce aa\nclient-nonce bb\n\
             host-key SHA256:h\nclient-key SHA256:c\nchannel none\n"
        );
        let s = key_transcript(
            Role::Server,
            "aa",
            "bb",
            "SHA256:h",
            "SHA256:c",
            Some(&[1; 32]),
        );
        assert!(
            String::from_utf8(s)
                .unwrap()
                .ends_with(&format!("channel {}\n", "01".repeat(32)))
        );
    }

    #[test]
    fn nonces_are_fresh_hex() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert!(is_nonce(&a) && is_nonce(&b));
        assert_ne!(a, b);
        assert!(!is_nonce("ABCD"));
    }
}
