//! The fuzz targets on stable, in `cargo test --workspace`: each target replays its seed corpus
//! (`fuzz/corpus/<target>/`) and then a bounded, seeded, reproducible stream of inputs (seed
//! mutations and random bytes; no coverage feedback, that is what `cargo +nightly fuzz run` adds).
//!
//! `DSAVMM_FUZZ_ITERS=N` changes the number of generated inputs per target (default below);
//! `DSAVMM_FUZZ_SEED=S` the seed. A failing input is written to `target/fuzz-failures/` and
//! named in the panic message: add it to the corpus and a regression test beside the code.

use std::collections::BTreeMap;

use fuzz_targets::harness::{self, Rng};

/// Generated inputs per target; each target's comment says what it costs in a debug build.
fn iterations(default: usize) -> usize {
    std::env::var("DSAVMM_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check(target: &str, default_iters: usize, max_len: usize) {
    let run = fuzz_targets::TARGETS
        .iter()
        .find(|t| t.0 == target)
        .expect("a target of that name")
        .1;
    let mut outcomes = BTreeMap::<String, usize>::new();
    let corpus = harness::corpus(target);
    assert!(
        !corpus.is_empty(),
        "no seed corpus in {:?}",
        harness::corpus_dir(target)
    );
    for (name, data) in &corpus {
        let what = guarded(target, &format!("corpus {name}"), run, data);
        println!("fuzz-stable: {target}: corpus {name}: {what}");
    }
    let seeds: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let seed = std::env::var("DSAVMM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6473_6176_6d6d);
    let mut rng = Rng::new(seed ^ target.len() as u64);
    let n = iterations(default_iters);
    let started = std::time::Instant::now();
    for i in 0..n {
        let data = harness::generate(&mut rng, &seeds, max_len);
        let what = guarded(
            target,
            &format!("generated input {i} (seed {seed})"),
            run,
            &data,
        );
        *outcomes.entry(what).or_default() += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz-stable: {target}: {} corpus + {n} generated inputs in {secs:.2} s ({:.0} inputs/s)",
        seeds.len(),
        n as f64 / secs.max(1e-9)
    );
    let mut by_count: Vec<_> = outcomes.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!(
        "fuzz-stable: {target}: {} distinct outcomes, most common: {:?}",
        by_count.len(),
        &by_count[..by_count.len().min(12)]
    );
}

/// Runs one input; on a panic, saves it and fails naming the file.
fn guarded(target: &str, what: &str, run: fn(&[u8]) -> String, data: &[u8]) -> String {
    std::panic::catch_unwind(|| run(data)).unwrap_or_else(|_| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{target}-{}", hex_digest(data)));
        let _ = std::fs::write(&path, data);
        panic!(
            "{target}: {what} panicked; input saved as {}",
            path.display()
        );
    })
}

/// FNV-1a of the input, as a file name.
fn hex_digest(data: &[u8]) -> String {
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

#[test]
fn every_target_is_tested_here() {
    let names: Vec<&str> = fuzz_targets::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        [
            "descriptor_engine",
            "dsa_mmio",
            "movdir64b",
            "api_request",
            "vfio_user_message"
        ]
    );
}

#[test]
fn descriptor_engine() {
    check("descriptor_engine", 20000, 4096);
}

#[test]
fn dsa_mmio() {
    check("dsa_mmio", 10000, 1024);
}

#[test]
fn movdir64b() {
    check("movdir64b", 5000, 1024);
}

#[test]
fn vfio_user_message() {
    check("vfio_user_message", 2000, 1024);
}

#[test]
fn api_request() {
    check("api_request", 20000, 512);
}
