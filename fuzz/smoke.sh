#!/usr/bin/env bash
# Builds every cargo-fuzz target (libFuzzer, nightly) and runs each briefly from its seed corpus,
# printing libFuzzer's last status line (executions, exec/s, coverage) per target. CI runs this
# before the tests (.ci/run); `DSAVMM_FUZZ_SECONDS` sets the run time per target (default 5).
# New corpus entries go to a temporary directory, never into the committed fuzz/corpus/; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"

secs="${DSAVMM_FUZZ_SECONDS:-5}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: installing the nightly toolchain (libFuzzer needs it)" >&2
    rustup toolchain install nightly --profile minimal
fi
# Installed once per machine under ~/.cargo/bin (about a minute to compile).
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cargo +nightly fuzz build
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$t"
    if ! cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$scratch/$t.log" 2>&1; then
        tail -n 60 "$scratch/$t.log" >&2
        echo "fuzz/smoke.sh: $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    echo "fuzz: $t: $(grep -E '^#[0-9]+' "$scratch/$t.log" | tail -n 1)"
done
