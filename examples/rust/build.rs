//! Links libmigrationkit the way a C consumer does, through its pkg-config
//! file: PKG_CONFIG_PATH, PKG_CONFIG_LIBDIR and PKG_CONFIG_SYSROOT_DIR pick
//! the installation exactly as they do for `cc $(pkg-config ...)`.
//!
//! It also compiles a few lines of C against the same header to learn the
//! size and field offsets of every struct src/ffi.rs declares by hand; the
//! binary compares them with its own at start-up, so a binding that drifted
//! from the header fails loudly instead of passing garbage to the library.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// (C type, Rust type in src/ffi.rs, every field of the Rust struct).
#[rustfmt::skip]
const STRUCTS: &[(&str, &str, &[&str])] = &[
    ("mk_region", "MkRegion",
     &["struct_size", "flags", "guest_phys_addr", "size", "host_addr", "dirty_granularity"]),
    ("mk_source_config", "MkSourceConfig",
     &["struct_size", "nr_vcpus", "transport_fd", "flags", "device_state_hint", "ack_timeout_ms",
       "auth_key", "auth_key_len"]),
    ("mk_source_callbacks", "MkSourceCallbacks",
     &["struct_size", "reserved", "user", "get_dirty_log", "write", "read", "pause_vcpus",
       "resume_vcpus", "kick_vcpu", "save_device_state", "device_state_size", "log", "progress",
       "get_vcpu_dirty_counts"]),
    ("mk_dest_config", "MkDestConfig",
     &["struct_size", "transport_fd", "flags", "reserved", "resume_cost_us", "auth_key", "auth_key_len"]),
    ("mk_dest_callbacks", "MkDestCallbacks",
     &["struct_size", "reserved", "user", "read", "write", "load_device_state", "log"]),
];

/// Header constants src/ffi.rs repeats.
const CONSTANTS: &[&str] = &[
    "MK_PAGE_SIZE",
    "MK_REGION_FRESH",
    "MK_LOG_INFO",
    "MK_ENOSPC",
];

fn pkg_config(args: &[&str]) -> String {
    let pc = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(&pc)
        .args(args)
        .arg("migrationkit")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {} (install pkg-config)", pc, e));
    if !out.status.success() {
        panic!(
            "`{} {} migrationkit` failed (is libmigrationkit installed, or PKG_CONFIG_PATH set?):\n{}",
            pc,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)
        .expect("pkg-config printed non-UTF-8")
        .trim()
        .to_string()
}

fn main() {
    for var in [
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR",
        "CC",
    ] {
        println!("cargo:rerun-if-env-changed={}", var);
    }
    println!("cargo:rerun-if-changed=build.rs");

    // pkg-config escapes spaces in paths with a backslash; a libdir with a
    // space is not supported here.
    let mut libdirs = Vec::new();
    for flag in pkg_config(&["--libs"]).split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", dir);
            libdirs.push(dir.to_string());
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={}", lib);
        } else {
            // e.g. the build-tree .pc's own -Wl,-rpath
            println!("cargo:rustc-link-arg={}", flag);
        }
    }
    // The binary must run without LD_LIBRARY_PATH wherever the library was
    // found at link time (build/prefix, /usr/local/lib...). For the system's
    // own library directory this is redundant but harmless.
    for dir in &libdirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
        // A rebuilt or reinstalled library may have a different header.
        println!("cargo:rerun-if-changed={}/libmigrationkit.so", dir);
    }

    let cflags = pkg_config(&["--cflags"]);
    let include_dirs: Vec<&str> = cflags
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("-I"))
        .collect();
    for dir in &include_dirs {
        println!("cargo:rerun-if-changed={}/migrationkit.h", dir);
    }
    write_layout_table(&cflags);
}

/// Writes OUT_DIR/layout.rs: a `vec![(name, rust value, C value), ...]`
/// expression that src/main.rs includes.
fn write_layout_table(cflags: &str) {
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <migrationkit.h>\nint main(void)\n{\n    puts(\"vec![\");\n",
    );
    for (ctype, rtype, fields) in STRUCTS {
        writeln!(
            c,
            "    printf(\"(\\\"sizeof({ct})\\\", std::mem::size_of::<ffi::{rt}>() as i64, %lld),\\n\", (long long)sizeof({ct}));",
            ct = ctype,
            rt = rtype
        )
        .unwrap();
        for f in *fields {
            writeln!(
                c,
                "    printf(\"(\\\"{ct}.{f}\\\", field_offset!(ffi::{rt}, {f}) as i64, %lld),\\n\", (long long)offsetof({ct}, {f}));",
                ct = ctype,
                rt = rtype,
                f = f
            )
            .unwrap();
        }
    }
    for k in CONSTANTS {
        writeln!(
            c,
            "    printf(\"(\\\"{k}\\\", ffi::{k} as i64, %lld),\\n\", (long long){k});",
            k = k
        )
        .unwrap();
    }
    c.push_str("    puts(\"]\");\n    return 0;\n}\n");

    let src = out_dir.join("layout.c");
    let exe = out_dir.join("layout");
    fs::write(&src, c).unwrap();
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .args(cflags.split_whitespace())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {}: {}", cc, e));
    assert!(
        status.success(),
        "compiling {} against migrationkit.h failed",
        src.display()
    );
    let out = Command::new(&exe)
        .output()
        .expect("running the layout probe");
    assert!(out.status.success(), "the layout probe failed");
    fs::write(out_dir.join("layout.rs"), out.stdout).unwrap();
}
