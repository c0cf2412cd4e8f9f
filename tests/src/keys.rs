//! Key pairs made by `lmas keygen`.

use super::*;

/// A key pair made by `lmas keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file.
    pub private_path: PathBuf,
    /// The public key (base64, trimmed), as in `<private_path>.pub`.
    pub public: String,
}

/// Runs `lmas keygen --out PATH` and checks its contract (stdout is the public key, `PATH.pub`
/// holds it).
pub fn keygen(path: &Path) -> KeyPair {
    let out = lmas(&["keygen", "--out", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lmas keygen --out {} failed ({}): {stderr}",
        path.display(),
        out.status
    );
    let pub_path = pub_path(path);
    let public = fs::read_to_string(&pub_path)
        .unwrap_or_else(|e| panic!("lmas keygen did not write {}: {e}", pub_path.display()))
        .trim()
        .to_string();
    assert!(!public.is_empty(), "{} is empty", pub_path.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        public,
        "lmas keygen printed something other than the public key in {}",
        pub_path.display()
    );
    KeyPair {
        private_path: path.to_path_buf(),
        public,
    }
}

/// 32 random bytes in base64 (from /dev/urandom): the form of a pre-shared key file.
pub fn random_key_b64() -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b = [0u8; 33];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b[..32]))
        .expect("read /dev/urandom");
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for i in 0..4 {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    // 32 bytes: 43 characters and one '=' of padding.
    out.truncate(43);
    out.push('=');
    out
}

/// `PATH.pub` for a private key file `PATH`.
pub fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}
