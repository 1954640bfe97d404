//! The stable driver: a deterministic input generator (seed-corpus mutations and random bytes)
//! and the corpus location. No libFuzzer, no coverage feedback; a bounded, reproducible run.

use std::path::PathBuf;

/// SplitMix64: small, deterministic, good enough to generate test inputs.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Values that tend to sit on boundaries: 0, all ones, powers of two and their neighbours.
    fn interesting(&mut self) -> u64 {
        let p = 1u64 << self.below(64);
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => p,
            3 => p - 1,
            4 => p.wrapping_add(1),
            _ => self.next_u64(),
        }
    }
}

/// The seed corpus of `target`: `fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

/// The seed corpus files of `target`, sorted by name (empty when the directory is missing).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::read(e.path()).ok().map(|d| (name, d))
        })
        .collect();
    files.sort();
    files
}

/// Input `i` of a run: a mutation of a seed (most of the time) or fresh random bytes, at most
/// `max_len` bytes.
pub fn generate(rng: &mut Rng, seeds: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(max_len + 1);
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        mutate(rng, &mut v, seeds);
    }
    v.truncate(max_len);
    v
}

fn mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    if v.is_empty() {
        v.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(v.len());
    match rng.below(7) {
        // Flip one bit.
        0 => v[at] ^= 1 << rng.below(8),
        // A random byte.
        1 => v[at] = rng.next_u64() as u8,
        // A boundary value, 1/2/4/8 bytes little-endian.
        2 => {
            let w = 1 << rng.below(4);
            let bytes = rng.interesting().to_le_bytes();
            for (i, b) in bytes.iter().take(w).enumerate() {
                if let Some(x) = v.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        // Insert random bytes.
        3 => {
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(at..at, ins);
        }
        // Delete a range.
        4 => {
            let end = (at + 1 + rng.below(16)).min(v.len());
            v.drain(at..end);
        }
        // Truncate.
        5 => v.truncate(at),
        // Splice in part of another seed.
        _ => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below(other.len() - from);
                let end = (at + n).min(v.len());
                v.splice(at..end, other[from..from + n].iter().copied());
            }
        }
    }
}
