//! Key material on disk: base64 text files, private keys private.

use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::handshake::noise_params;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: permissions {mode:o} are too open: private key files must not be readable by group or others (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("{what}: not a base64-encoded 32-byte key")]
    Malformed { what: String },
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A 32-byte X25519 public key, printed as base64.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses base64 text; `what` names the source for the error.
    pub fn parse(text: &str, what: &str) -> Result<PublicKey, KeyError> {
        decode_key(text, what).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A gateway's long-term X25519 key pair.
#[derive(Clone)]
pub struct StaticKeypair {
    pub private: [u8; 32],
    pub public: PublicKey,
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKeypair {{ public: {} }}", self.public)
    }
}

impl StaticKeypair {
    pub fn generate() -> Result<StaticKeypair, KeyError> {
        let builder = snow::Builder::new(noise_params(false));
        let kp = builder
            .generate_keypair()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private_bytes(&kp.private, "generated key")
    }

    fn from_private_bytes(private: &[u8], what: &str) -> Result<StaticKeypair, KeyError> {
        let private: [u8; 32] = private.try_into().map_err(|_| KeyError::Malformed {
            what: what.to_string(),
        })?;
        let public = x25519_public(&private);
        Ok(StaticKeypair {
            private,
            public: PublicKey(public),
        })
    }

    /// Loads a private key file written by [`StaticKeypair::write`], refusing
    /// files that group or others can read (as OpenSSH does).
    pub fn load(path: &Path) -> Result<StaticKeypair, KeyError> {
        let text = read_private_file(path)?;
        let bytes = decode_key(&text, &path.display().to_string())?;
        Self::from_private_bytes(&bytes, &path.display().to_string())
    }

    /// Writes the private key (mode 0600, never overwriting) and `PATH.pub`.
    pub fn write(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| KeyError::Io { path: p, source }
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        use std::io::Write;
        writeln!(file, "{}", B64.encode(self.private)).map_err(io(path))?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        fs::write(&pub_path, format!("{}\n", self.public)).map_err(io(&pub_path))?;
        Ok(pub_path)
    }
}

/// Computes the X25519 public key for a private scalar with snow's Curve25519,
/// the implementation the handshake uses: setting the private key derives it.
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let dh = snow::resolvers::DefaultResolver;
    use snow::resolvers::CryptoResolver;
    let mut kp = dh
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("the default resolver provides Curve25519");
    kp.set(private);
    out.copy_from_slice(kp.pubkey());
    out
}

/// A 32-byte pre-shared key mixed into the handshake (defence in depth).
#[derive(Clone)]
pub struct PresharedKey(pub [u8; 32]);

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl PresharedKey {
    pub fn load(path: &Path) -> Result<PresharedKey, KeyError> {
        let text = read_private_file(path)?;
        decode_key(&text, &path.display().to_string()).map(PresharedKey)
    }
}

/// Refuses a file that decides whom this gateway trusts (its config, a key) when someone
/// else could have written it, as OpenSSH's StrictModes does: writable by group or others,
/// or owned by a user other than this one or root. Says what was found and the fix.
pub fn check_trusted(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    trusted(path, &meta)
}

fn trusted(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    let untrusted = |why: String| KeyError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(untrusted(format!(
            "writable by {who} (mode {mode:o}): whoever can write it decides whom this gateway trusts; fix with: chmod go-w {}",
            path.display()
        )));
    }
    let (owner, me) = (meta.uid(), rustix::process::geteuid().as_raw());
    if owner != me && owner != 0 {
        return Err(untrusted(format!(
            "owned by uid {owner}, neither this user (uid {me}) nor root; fix with: chown {me} {}",
            path.display()
        )));
    }
    Ok(())
}

fn read_private_file(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    trusted(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io)
}

fn decode_key(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let bytes = B64.decode(text.trim()).map_err(|_| KeyError::Malformed {
        what: what.to_string(),
    })?;
    bytes.try_into().map_err(|_| KeyError::Malformed {
        what: what.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("lmas-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.key");
        let kp = StaticKeypair::generate().unwrap();
        let pub_path = kp.write(&path).unwrap();
        let loaded = StaticKeypair::load(&path).unwrap();
        assert_eq!(loaded.public, kp.public);
        let text = fs::read_to_string(pub_path).unwrap();
        assert_eq!(PublicKey::parse(&text, "pub").unwrap(), kp.public);
        // never overwrite an existing key
        assert!(kp.write(&path).is_err());
        // refuse a world-readable private key
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            StaticKeypair::load(&path),
            Err(KeyError::TooOpen { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_keys_are_named() {
        let err = PublicKey::parse("not base64!", "peer.public_key").unwrap_err();
        assert!(err.to_string().contains("peer.public_key"));
        assert!(PublicKey::parse(&B64.encode([1u8; 31]), "x").is_err());
    }
}
