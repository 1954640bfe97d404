//! Builds the no_std self-test guest (resources/guests/selftest) with its own flags and target
//! directory, and hands its ELF to `include_bytes!` through OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest = manifest_dir.join("../resources/guests/selftest");
    for part in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "linker.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(part).display());
    }
    let target_dir = out_dir.join("selftest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        // The guest has its own flags (.cargo/config.toml); the host build's must not leak in.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("CARGO_PROFILE_RELEASE_LTO")
        .status()
        .expect("cannot run cargo to build the self-test guest");
    assert!(status.success(), "building the self-test guest failed");
    let elf = target_dir.join("release/selftest");
    std::fs::copy(&elf, out_dir.join("selftest.elf")).expect("self-test guest ELF missing");
}
