//! Binds the system DPDK (found with `pkg-config libdpdk`) and compiles the C shim that gives
//! its static inline hot-path functions a real symbol.
//!
//! Linking is dynamic on purpose: Debian's shared EAL loads every PMD in its plugin directory
//! at `rte_eal_init`, so no driver library has to be named here.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Headers whose items are bound (a regex over the header's path).
const ALLOWED_HEADERS: &str = concat!(
    r".*/(rte_eal|rte_errno|rte_lcore|rte_thread|rte_cycles|rte_dev|rte_bus_vdev",
    r"|rte_mempool|rte_mbuf|rte_mbuf_core|rte_ethdev|rte_ether|rte_hash|rte_jhash",
    r"|rte_hash_crc|rte_log|shim)\.h"
);

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Emits the rustc-link-lib / rustc-link-search lines for the libraries pkg-config names.
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!("DPDK >= 22.11 not found by pkg-config (install libdpdk-dev): {e}")
        });

    let cflags = dpdk_cflags();

    let mut build = cc::Build::new();
    build.file("shim/shim.c").include("shim").warnings(true);
    // The tokens go in the order pkg-config printed them: `-include rte_config.h` is two
    // tokens that only mean something together.
    for flag in &cflags {
        build.flag(flag);
    }
    build.compile("nicproxy_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/wrapper.h")
        .clang_args(&cflags)
        .clang_arg("-Ishim")
        // Only the items of the headers nicproxy uses (and whatever those items need): the
        // whole rte_.* namespace drags in rte_flow, whose packed-and-aligned protocol headers
        // Rust cannot represent.
        .allowlist_file(ALLOWED_HEADERS)
        .allowlist_var("RTE_.*")
        // Static inlines have no symbol in the shared libraries; the shim wraps those we need.
        .generate_inline_functions(false)
        // DPDK's comments hold indented text that rustdoc would run as doctests.
        .generate_comments(false)
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on shim/wrapper.h with the libdpdk cflags");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs to OUT_DIR");

    // Only used to show which DPDK the bindings came from.
    println!("cargo:version={}", lib.version);
}

/// `pkg-config --cflags libdpdk`, split on whitespace (DPDK's .pc file uses no quoting).
fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_owned());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running `{pkg_config} --cflags libdpdk`: {e}"));
    assert!(
        out.status.success(),
        "`{pkg_config} --cflags libdpdk` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pkg-config printed non-UTF-8 cflags")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
