//! The relay's server secret and the keyed hashes that stand in for codes and
//! tokens in the store, so that a leaked database yields nothing usable.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::protocol::SessionCode;

/// Name of the secret's file inside the data dir.
pub const SECRET_FILE: &str = "secret.key";

/// A keyed hash as stored.
pub type Digest = [u8; 32];

/// The server secret. Never written to the database or a log.
#[derive(Clone)]
pub struct Keys {
    secret: [u8; 32],
}

impl Keys {
    /// Reads the secret from `dir/secret.key`, creating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let secret = parse_hex32(text.trim()).with_context(|| {
                    format!("{} is not 64 hex digits; restore it from a backup or delete it (every code and token becomes invalid)", path.display())
                })?;
                Ok(Self { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).context("the OS random number generator failed")?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                file.write_all(hex(&secret).as_bytes())?;
                file.sync_all()?;
                Ok(Self { secret })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Parses `AIC_RELAY_SECRET`: 64 hex digits.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(Self { secret: parse_hex32(text.trim()).context("the secret must be 64 hex digits")? })
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> Digest {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// What a code is stored and looked up by.
    pub fn code_hash(&self, code: &SessionCode) -> Digest {
        self.mac(b"aic code v1\0", code.canonical().as_bytes())
    }

    /// A short tag for an account, stable for the relay's secret: shown to
    /// operators beside the masked email, it tells accounts apart without
    /// revealing the address.
    pub fn account_fingerprint(&self, account_id: i64) -> String {
        hex(&self.mac(b"aic account fingerprint v1\0", &account_id.to_be_bytes())[..4])
    }

    /// What a web secret (a magic link, its short code, a browser's or a
    /// session's cookie, an OAuth code or token) is stored as; `kind` keeps
    /// one kind's hash from matching another's.
    pub fn web_hash(&self, kind: &str, secret: &str) -> Digest {
        self.mac(format!("aic web v1\0{kind}\0").as_bytes(), secret.as_bytes())
    }

    /// The key MCP task ids are sealed under (AEAD): ids then carry what
    /// the relay needs and open on every relay of a cluster, which share the
    /// secret, and on this one after a restart.
    pub fn task_key(&self) -> Digest {
        self.mac(b"aic mcp task key v1\0", b"")
    }

    /// What an agent token is stored as.
    pub fn token_hash(&self, token: &str) -> Digest {
        self.mac(b"aic agent token v1\0", token.as_bytes())
    }
}

/// A new random token: 32 bytes from the OS CSPRNG, as 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    hex(&bytes)
}

/// Constant-time equality of two digests.
pub fn digest_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Keys::load_or_create(dir.path()).unwrap();
        let code = SessionCode::generate();
        assert_eq!(a.code_hash(&code), b.code_hash(&code));
        assert_ne!(a.code_hash(&code), a.token_hash(&code.canonical()), "labels separate the two uses");
    }

    #[test]
    fn corrupt_secret_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE), "nope").unwrap();
        let err = format!("{:#}", Keys::load_or_create(dir.path()).err().unwrap());
        assert!(err.contains("secret.key is not 64 hex digits"), "{err}");
    }
}
