//! Bad input gives one clear error line on stderr and a non-zero exit, never a panic.

use std::process::Command;

fn dsavmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dsavmm"))
        .args(args)
        .output()
        .expect("run dsavmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("dsavmm-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

/// Asserts a failure with exactly one error line that mentions `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, _out, err) = dsavmm(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("dsavmm: warning:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got {err:?}"
    );
    assert!(lines[0].starts_with("dsavmm: error:"), "{err:?}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_kernel_file() {
    assert_one_line_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn text_file_as_kernel() {
    let p = tmp("text", b"#!/bin/sh\necho this is not a kernel\n");
    assert_one_line_error(
        &["run", "--kernel", p.to_str().unwrap()],
        "neither an ELF vmlinux nor a bzImage",
    );
    let _ = std::fs::remove_file(p);
}

#[test]
fn directory_as_kernel() {
    assert_one_line_error(&["run", "--kernel", "/tmp"], "/tmp is not a regular file");
}

#[test]
fn truncated_elf_as_kernel() {
    let p = tmp("elf", b"\x7fELF\x02\x01\x01\0\0\0");
    assert_one_line_error(
        &["run", "--kernel", p.to_str().unwrap()],
        "cannot load kernel",
    );
    let _ = std::fs::remove_file(p);
}

#[test]
fn memory_zero_and_huge() {
    assert_one_line_error(
        &["selftest", "--memory", "0"],
        "--memory 0 MiB is too small",
    );
    assert_one_line_error(
        &["selftest", "--memory", "18446744073709551615"],
        "too large",
    );
    assert_one_line_error(&["run", "--kernel", "/x", "--memory", "1"], "too small");
}

#[test]
fn vcpus_zero_and_huge() {
    assert_one_line_error(&["selftest", "--vcpus", "0"], "--vcpus 0 is out of range");
    assert_one_line_error(
        &["selftest", "--vcpus", "100000"],
        "--vcpus 100000 is out of range",
    );
}

#[test]
fn missing_initramfs() {
    let (code, _, _) = dsavmm(&["selftest-image", "--output", "/nonexistent-dir/x"]);
    assert_ne!(code, 0);
    let elf = tmp("selftest.elf", b"");
    let (code, _, err) = dsavmm(&["selftest-image", "--output", elf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            elf.to_str().unwrap(),
            "--initramfs",
            "/nonexistent/initrd",
        ],
        "/nonexistent/initrd",
    );
    let _ = std::fs::remove_file(elf);
}

#[test]
fn bad_log_level_and_serial() {
    assert_one_line_error(&["--log-level", "[[[", "selftest"], "invalid log level");
    assert_one_line_error(
        &["selftest", "--serial", "/nonexistent-dir/console.log"],
        "cannot open serial output",
    );
}

#[test]
fn unknown_argument_is_rejected() {
    let (code, _, err) = dsavmm(&["run", "--kernal", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--kernal"), "{err}");
}
