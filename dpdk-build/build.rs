//! Builds the DPDK bindings against the system libdpdk (found with
//! pkg-config, never a hard-coded path or library list): bindgen over
//! `shim/bindings.h`, and the C shim that exports DPDK's static-inline
//! functions, compiled with libdpdk's own cflags.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/bindings.h");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");

    let dpdk = match pkg_config::Config::new()
        .atleast_version("21.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "lmas-dpdk needs the system DPDK (>= 21.11) with its pkg-config file: \
             on Debian/Ubuntu `apt-get install dpdk-dev libdpdk-dev libclang-dev pkg-config`, \
             or build the gateway without the DPDK datapath (`cargo build --no-default-features`). \
             pkg-config said: {e}"
        ),
    };

    // pkg-config's cflags carry more than include paths (`-include rte_config.h`,
    // `-march=...`): pass all of them, in order, to both clang (bindgen) and cc.
    let out = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("running pkg-config --cflags libdpdk");
    let raw_cflags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let mut shim = cc::Build::new();
    shim.file("shim/shim.c").include("shim").warnings(true);
    for inc in &dpdk.include_paths {
        shim.include(inc);
    }
    for flag in raw_cflags.iter().filter(|f| !f.starts_with("-I")) {
        shim.flag(flag);
    }
    shim.compile("lmas_dpdk_shim");

    let mut builder = bindgen::Builder::default()
        .header("shim/bindings.h")
        .clang_arg("-Ishim")
        .clang_args(raw_cflags.iter())
        .allowlist_function("rte_.*")
        .allowlist_function("lmas_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .allowlist_var("RING_F_.*")
        // Two rte_flow.h types bindgen cannot express (packed containing
        // aligned; a Debug impl over a bitfield union): keep them opaque.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for inc in &dpdk.include_paths {
        builder = builder.clang_arg(format!("-I{}", inc.display()));
    }
    let bindings = builder
        .generate()
        .expect("bindgen over the DPDK headers (is libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
