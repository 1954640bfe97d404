#!/usr/bin/env bash
# Run the MOVDIR64B/MOVDIRI test guest (guest.S) under QEMU's TCG.
#
#   run.sh            build (or reuse) the patched QEMU with ../build.sh and run the
#                     guest; exit 0 when every check passes.
#   run.sh --stock    contrast: run the same guest on Debian's stock qemu-system-x86
#                     7.2 (unpacked with apt-get download + dpkg-deb -x into
#                     ${DSAVMM_CACHE:-<repo>/target/cache}/qemu-stock, nothing
#                     installed); exit 0 when that QEMU fails the test with #UD on
#                     MOVDIR64B, as it is expected to.
#
# Env: QEMU and QEMU_FIRMWARE override the QEMU binary and its -L directory
# (default: the two lines ../build.sh prints).  DSAVMM_CACHE as for ../build.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cache_root="${DSAVMM_CACHE:-$repo/target/cache}"
mode="${1:-patched}"

log() { echo "qemu/test/run.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- the guest ------------------------------------------------------------------
gcc -c -o "$work/guest.o" "$here/guest.S"
ld -nostdlib -z max-page-size=4096 --no-warn-rwx-segments -T "$here/guest.ld" \
    -o "$work/guest.elf" "$work/guest.o"

# --- the QEMU ---------------------------------------------------------------------
qemu_env=()
case "$mode" in
patched)
    if [[ -z "${QEMU:-}" ]]; then
        mapfile -t out < <("$here/../build.sh")
        [[ ${#out[@]} == 2 ]] || die "../build.sh did not print the qemu and firmware paths"
        QEMU="${out[0]}"
        QEMU_FIRMWARE="${QEMU_FIRMWARE:-${out[1]}}"
    fi
    ;;
--stock)
    stock="$cache_root/qemu-stock"
    root="$stock/root"
    if [[ ! -f "$stock/.complete" ]]; then
        log "fetching Debian's stock qemu-system-x86 into $stock"
        rm -rf "$stock"
        mkdir -p "$stock/debs" "$root"
        # The QEMU packages and the shared libraries this machine lacks.
        (cd "$stock/debs" && apt-get -o APT::Sandbox::User=root download \
            qemu-system-x86 qemu-system-common qemu-system-data \
            libcapstone4 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2 \
            libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200 >&2)
        for deb in "$stock"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
        touch "$stock/.complete"
    fi
    QEMU="$root/usr/bin/qemu-system-x86_64"
    QEMU_FIRMWARE="$root/usr/share/qemu"
    qemu_env=(env "LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
              "QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu")
    if "${qemu_env[@]}" ldd "$QEMU" | grep -q "not found"; then
        "${qemu_env[@]}" ldd "$QEMU" | grep "not found" >&2
        die "stock QEMU misses shared libraries (listed above)"
    fi
    ;;
*)
    die "usage: run.sh [--stock]"
    ;;
esac
[[ -x "$QEMU" ]] || die "no QEMU at $QEMU"
[[ -n "${QEMU_FIRMWARE:-}" && -e "$QEMU_FIRMWARE/bios-microvm.bin" ]] \
    || die "no bios-microvm.bin in QEMU_FIRMWARE=${QEMU_FIRMWARE:-}"

# --- run --------------------------------------------------------------------------
log "$("${qemu_env[@]}" "$QEMU" --version | head -n1)"
set +e
"${qemu_env[@]}" timeout 60 "$QEMU" -L "$QEMU_FIRMWARE" \
    -M microvm -accel tcg -cpu max -smp 1 -m 64M \
    -nographic -nodefaults -no-reboot -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=1 \
    -kernel "$work/guest.elf" </dev/null 2>&1 | head -c 65536 >"$work/out.txt"
rc=${PIPESTATUS[0]}
set -e
cat "$work/out.txt"
log "qemu exit status $rc (33 = guest passed, 35 = guest failed)"

case "$mode" in
patched)
    if [[ $rc == 33 ]] && grep -q "^RESULT: PASS" "$work/out.txt"; then
        log "PASS"
        exit 0
    fi
    log "FAIL"
    exit 1
    ;;
--stock)
    if [[ $rc == 35 ]] && grep -q "unexpected exception vector 0x0000000000000006" "$work/out.txt"; then
        log "stock QEMU fails as expected: #UD on MOVDIR64B"
        exit 0
    fi
    log "stock QEMU did not fail with #UD as expected"
    exit 1
    ;;
esac
