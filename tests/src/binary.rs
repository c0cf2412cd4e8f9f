//! Where the workspace and the `lmas` binary under test are.

use super::*;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `lmas` binary under test: `$LMAS_BIN`, else `<workspace>/target/release/lmas`.
///
/// Panics with a message saying how to build it when it is missing: a test that cannot run
/// fails, it never passes silently.
pub fn lmas_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LMAS_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!(
                "LMAS_BIN={} does not exist or is not a file; build it with \
                 `cargo build --release -p lmas` or point LMAS_BIN at the lmas binary",
                p.display()
            );
        }
        return p;
    }
    let p = workspace_root().join("target/release/lmas");
    if !p.is_file() {
        panic!(
            "the lmas binary was not found at {}: run `cargo build --release -p lmas` first \
             (or set LMAS_BIN=/path/to/lmas, e.g. when CARGO_TARGET_DIR is set)",
            p.display()
        );
    }
    p
}
