#!/usr/bin/env bash
# Build the L2 Linux test guest from Debian bookworm packages, without installing anything.
#
# Produces (in $DSAVMM_CACHE, default <repo>/target/cache) and prints as KEY=VALUE lines:
#   BZIMAGE          Debian's 6.12 bzImage (linux-image-$KVER)
#   VMLINUX          the ELF vmlinux (with its PVH note) unpacked from that bzImage's zstd payload
#   BUSYBOX          busybox from busybox-static
#   BOOT_INITRAMFS   uncompressed newc initramfs whose /init prints `L2-INIT-MARKER nproc=<n>` and powers off
#
# Usage: build.sh [all]        (default: everything above)
# A second run is instant: every output is keyed by package version or by the hash of its inputs.
# Extending: add a build_<name>_initramfs function that stages extra files through make_initramfs and
# call it from main (the idxd/dmatest guest is meant to be added that way).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../rig/lib.sh
source "$HERE/../../rig/lib.sh"

OUT="$CACHE/linux"
mkdir -p "$OUT"

# bzimage: path of the packaged bzImage.
bzimage() {
    local f
    f="$(kernel_pkg_dir)/boot/vmlinuz-$KVER"
    [[ -f "$f" ]] || die "no $f in the kernel package"
    echo "$f"
}

# build_vmlinux: extract the ELF vmlinux from the bzImage payload (zstd, size trailer dropped).
build_vmlinux() {
    local bz out setup_sects payload_off payload_len start
    bz="$(bzimage)"
    out="$OUT/$KVER/vmlinux"
    if [[ -f "$out" ]]; then
        echo "$out"
        return 0
    fi
    mkdir -p "$OUT/$KVER"
    # setup_sects at 0x1f1 (1 byte), payload_offset at 0x248 and payload_length at 0x24c (4 bytes LE).
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    payload_off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    payload_len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    [[ "$setup_sects" -eq 0 ]] && setup_sects=4
    start=$(( (setup_sects + 1) * 512 + payload_off ))
    local magic
    magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' ')
    [[ "$magic" == "28b52ffd" ]] || die "bzImage payload at $start is not zstd (magic $magic)"
    dd if="$bz" bs=1M iflag=skip_bytes,count_bytes skip="$start" count=$((payload_len - 4)) status=none \
        | zstd -q -d -f -o "$out.tmp.$$" \
        || die "zstd could not unpack the bzImage payload (is zstd installed?)"
    [[ "$(od -An -c -N4 "$out.tmp.$$" | tr -d ' ')" == '177ELF' ]] || die "payload is not an ELF"
    mv -f "$out.tmp.$$" "$out"
    echo "$out"
}

# make_initramfs NAME INIT STAGE_FN: build $OUT/initramfs-NAME-<hash>.cpio from busybox, the /init
# script INIT and whatever STAGE_FN (called with the staging dir; may be `:`) adds. The hash covers
# busybox's version, the /init script, and STAGE_FN's key (the output of `STAGE_FN --key`).
make_initramfs() {
    local name="$1" init="$2" stage_fn="$3" bb key out stage
    bb="$(busybox_bin)"
    key="$( { echo "v2 $bb"; cat "$init"; [[ "$stage_fn" == ":" ]] || "$stage_fn" --key; } | short_hash)"
    out="$OUT/initramfs-$name-$key.cpio"
    if [[ -f "$out" ]]; then
        echo "$out"
        return 0
    fi
    stage="$(mktemp -d "$OUT/.stage-$name.XXXXXX")"
    mkdir -p "$stage/bin" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp" "$stage/etc"
    cp "$bb" "$stage/bin/busybox"
    busybox_links "$stage/bin" "$bb"
    install -m 0755 "$init" "$stage/init"
    [[ "$stage_fn" == ":" ]] || "$stage_fn" "$stage"
    pack_cpio "$stage" "$out"
    rm -rf "$stage"
    echo "$out"
}

build_boot_initramfs() {
    make_initramfs boot "$HERE/init-boot.sh" :
}

main() {
    local what="${1:-all}"
    case "$what" in
        all)
            # Assign first: a failure inside $(...) must stop the script (set -e).
            local bz vmlinux bb boot
            bz="$(bzimage)"
            vmlinux="$(build_vmlinux)"
            bb="$(busybox_bin)"
            boot="$(build_boot_initramfs)"
            echo "BZIMAGE=$bz"
            echo "VMLINUX=$vmlinux"
            echo "BUSYBOX=$bb"
            echo "BOOT_INITRAMFS=$boot"
            ;;
        *) die "unknown target '$what' (expected: all)" ;;
    esac
}

main "$@"
