//! Compiles the XDP loss program (`scripts/bpf/loss.c`) with clang and links libbpf.
//!
//! Needs `clang` and `libbpf-dev` (Debian: `apt-get install clang libbpf-dev`). The object is
//! embedded into the `linkemu` binary, so nothing has to be installed next to it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = manifest.join("../bpf/loss.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("loss.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps in the multiarch directory that
    // clang does not search for the bpf target.
    for dir in multiarch_include_dirs() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg(&src).arg("-o").arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`{clang}` failed ({s}) compiling {}: is libbpf-dev installed?",
            src.display()
        ),
        Err(e) => panic!(
            "cannot run `{clang}` ({e}): install clang and libbpf-dev to build linkemu \
             (Debian: apt-get install clang libbpf-dev)"
        ),
    }
    println!("cargo:rustc-link-lib=dylib=bpf");
}

fn multiarch_include_dirs() -> Vec<PathBuf> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => "",
    };
    let dir = Path::new("/usr/include").join(triple);
    if !triple.is_empty() && dir.join("asm/types.h").exists() {
        vec![dir]
    } else {
        Vec::new()
    }
}
