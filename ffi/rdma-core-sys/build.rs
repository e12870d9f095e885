//! Finds libibverbs and librdmacm with pkg-config, generates raw bindings with bindgen
//! and compiles the C shim that gives the static-inline verbs a linkable symbol.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=build.rs");

    // pkg-config emits the cargo:rustc-link-lib lines itself.
    let verbs = pkg_config::Config::new()
        .atleast_version("1.8")
        .probe("libibverbs")
        .unwrap_or_else(|e| {
            panic!("pkg-config could not find libibverbs (install libibverbs-dev): {e}")
        });
    let cm = pkg_config::Config::new()
        .probe("librdmacm")
        .unwrap_or_else(|e| {
            panic!("pkg-config could not find librdmacm (install librdmacm-dev): {e}")
        });

    let include_paths: Vec<PathBuf> = verbs
        .include_paths
        .iter()
        .chain(cm.include_paths.iter())
        .cloned()
        .collect();

    let mut build = cc::Build::new();
    build
        .file("shim/shim.c")
        .warnings(true)
        .flag_if_supported("-Wextra");
    for p in &include_paths {
        build.include(p);
    }
    build.compile("nicproxy_rdma_shim");

    let mut builder = bindgen::Builder::default()
        .header("shim/shim.h")
        .allowlist_function("ibv_.*")
        .allowlist_function("rdma_.*")
        .allowlist_function("nicproxy_ibv_.*")
        .allowlist_type("ibv_.*")
        .allowlist_type("rdma_.*")
        .allowlist_var("IBV_.*")
        .allowlist_var("RDMA_.*")
        // Bitflag enums are combined with `|`; the rest stay plain constants so every
        // value that the kernel or provider may hand back is representable.
        .bitfield_enum("ibv_access_flags")
        .bitfield_enum("ibv_send_flags")
        .bitfield_enum("ibv_qp_attr_mask")
        .bitfield_enum("ibv_wc_flags")
        .constified_enum_module("ibv_wc_status")
        .constified_enum_module("ibv_wc_opcode")
        .constified_enum_module("ibv_wr_opcode")
        .constified_enum_module("ibv_qp_state")
        .constified_enum_module("ibv_qp_type")
        .constified_enum_module("ibv_port_state")
        .constified_enum_module("ibv_mtu")
        .constified_enum_module("rdma_cm_event_type")
        .constified_enum_module("rdma_port_space")
        .default_enum_style(bindgen::EnumVariation::Consts)
        // These inline functions are macros or static inlines in verbs.h; the shim's
        // `nicproxy_` versions are the callable ones.
        .blocklist_function("ibv_post_send")
        .blocklist_function("ibv_post_recv")
        .blocklist_function("ibv_poll_cq")
        .blocklist_function("ibv_req_notify_cq")
        .blocklist_function("ibv_query_port")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }
    let bindings = builder
        .generate()
        .expect("bindgen failed over infiniband/verbs.h and rdma/rdma_cma.h");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("could not write the generated bindings");
}
