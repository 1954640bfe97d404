#!/usr/bin/env bash
# Boots the self-test guest under QEMU's microvm machine (PVH entry) and
# reports its result.
#
# Usage: run-qemu.sh [QEMU_BINARY]
#   QEMU_BINARY     qemu-system-x86_64 to run (default: $QEMU, else from PATH)
# Environment (all optional):
#   QEMU_DATA       directory with bios-microvm.bin (passed as -L), e.g. the
#                   usr/share/qemu of an extracted qemu-system-data package
#   ACCEL           kvm (default) or tcg
#   VCPUS           number of vCPUs (default 2)
#   MEM_MIB         guest RAM in MiB (default 64)
#   INITRD          file passed with -initrd; its FNV-1a 64 is checked
#   APPEND          extra kernel command line
#   ELF             guest ELF (default: target/release/selftest here; built
#                   with cargo when missing)
#   TIMEOUT         seconds before QEMU is killed (default 60)
# Prints the guest's serial output, then one line with the wall times (ms)
# from start to the first serial line and to QEMU's exit. Exits with the
# guest's failure count (QEMU's isa-debug-exit status is (count << 1) | 1),
# or 125 when QEMU itself failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
qemu=${1:-${QEMU:-qemu-system-x86_64}}
accel=${ACCEL:-kvm}
vcpus=${VCPUS:-2}
mem=${MEM_MIB:-64}
timeout_s=${TIMEOUT:-60}
elf=${ELF:-$here/target/release/selftest}

if [ ! -f "$elf" ]; then
    (cd "$here" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS cargo build --release)
fi

if [ "$accel" = kvm ]; then
    cpu=(-accel kvm -cpu host,-arch-capabilities)
else
    cpu=(-accel tcg -cpu max)
fi

append="selftest.vcpus=$vcpus selftest.mem_mib=$mem"
initrd=()
if [ -n "${INITRD:-}" ]; then
    fnv=$(python3 -c '
import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
print("%016x" % h)' "$INITRD")
    append="$append selftest.initrd_fnv=$fnv"
    initrd=(-initrd "$INITRD")
fi
append="$append ${APPEND:-}"

data=()
if [ -n "${QEMU_DATA:-}" ]; then
    data=(-L "$QEMU_DATA")
fi

start=$EPOCHREALTIME
set +e
timeout "$timeout_s" "$qemu" "${data[@]}" -M microvm,acpi=on "${cpu[@]}" -m "$mem" -smp "$vcpus" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$elf" -append "$append" "${initrd[@]}" 2>&1 |
    {
        first=""
        summary=no
        while IFS= read -r line; do
            [ -z "$first" ] && first=$EPOCHREALTIME
            case "$line" in
                "selftest: "*" passed, "*" failed, "*" skipped"*) summary=yes ;;
            esac
            printf '%s\n' "$line"
        done
        echo "${first:-} $summary" > "${TMPDIR:-/tmp}/selftest-first.$$"
    }
rc=${PIPESTATUS[0]}
set -e
end=$EPOCHREALTIME
read -r first summary < "${TMPDIR:-/tmp}/selftest-first.$$" || true
if [ "$first" = yes ] || [ "$first" = no ]; then summary=$first; first=""; fi
rm -f "${TMPDIR:-/tmp}/selftest-first.$$"
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }
if [ -n "$first" ]; then
    echo "run-qemu: first serial line after $(ms "$start" "$first") ms, exit after $(ms "$start" "$end") ms"
else
    echo "run-qemu: no serial output; exit after $(ms "$start" "$end") ms"
fi
# QEMU's own errors also exit with 1: trust the status only after a summary line.
if [ "${summary:-no}" = yes ] && [ $((rc & 1)) -eq 1 ]; then
    failures=$((rc >> 1))
    echo "run-qemu: guest reported $failures failure(s)"
    exit "$failures"
fi
echo "run-qemu: QEMU exited with status $rc (no isa-debug-exit result)" >&2
exit 125
