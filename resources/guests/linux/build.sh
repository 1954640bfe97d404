#!/usr/bin/env bash
# Build the L2 Linux test guest from Debian bookworm packages, without installing anything.
#
# Produces (in $DSAVMM_CACHE, default <repo>/target/cache) and prints as KEY=VALUE lines:
#   BZIMAGE          Debian's bzImage (linux-image-$KVER: 6.12 by default; DSAVMM_GUEST_KVER and
#                    DSAVMM_GUEST_KPKG_VERSION pick another, e.g. bookworm's 6.1.0-57-amd64 6.1.192-3)
#   VMLINUX          the ELF vmlinux (with its PVH note) unpacked from that bzImage's zstd payload
#   BUSYBOX          busybox from busybox-static
#   BOOT_INITRAMFS   uncompressed newc initramfs whose /init prints `L2-INIT-MARKER nproc=<n>` and powers off
#   IDXD_INITRAMFS   (target `idxd` only) the idxd guest (init-idxd.sh): Debian's unmodified
#                    idxd.ko/idxd_bus.ko, accel-config 3.5.3 with its libraries, and dmatest.ko built out
#                    of tree from linux-source-6.12 against the unpacked headers (needs gcc-12 and make)
#
# Usage: build.sh [all|idxd]   (all, the default: the four above; idxd: VMLINUX and IDXD_INITRAMFS)
# A second run is instant: every output is keyed by package version or by the hash of its inputs.
# Extending: add a build_<name>_initramfs function that stages extra files through make_initramfs and
# call it from main (the idxd/dmatest guest is meant to be added that way).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../rig/lib.sh
source "$HERE/../../rig/lib.sh"

# The guest's kernel may differ from the rig's (the driver matrix: Debian's 6.1 as well as 6.12).
KVER="${DSAVMM_GUEST_KVER:-$KVER}"
KPKG_VERSION="${DSAVMM_GUEST_KPKG_VERSION:-$KPKG_VERSION}"

OUT="$CACHE/linux"
mkdir -p "$OUT"

# bzimage: path of the packaged bzImage.
bzimage() {
    local f
    f="$(kernel_pkg_dir)/boot/vmlinuz-$KVER"
    [[ -f "$f" ]] || die "no $f in the kernel package"
    echo "$f"
}

# build_vmlinux: extract the ELF vmlinux from the bzImage payload (zstd or xz, size trailer dropped).
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
    # Debian's 6.12 compresses the payload with zstd, its 6.1 with xz.
    local unpack
    case "$magic" in
    28b52ffd) unpack=(zstd -q -d -c) ;;
    fd377a58) unpack=(xz -q -d -c) ;;
    *) die "bzImage payload at $start is neither zstd nor xz (magic $magic)" ;;
    esac
    dd if="$bz" bs=1M iflag=skip_bytes,count_bytes skip="$start" count=$((payload_len - 4)) status=none \
        | "${unpack[@]}" >"$out.tmp.$$" \
        || die "${unpack[0]} could not unpack the bzImage payload (is ${unpack[0]} installed?)"
    [[ "$(od -An -c -N4 "$out.tmp.$$" | tr -d ' ')" == '177ELF' ]] || die "payload is not an ELF"
    mv -f "$out.tmp.$$" "$out"
    echo "$out"
}

# make_initramfs NAME INIT STAGE_FN: build $OUT/initramfs-NAME-<hash>.cpio from busybox, the /init
# script INIT and whatever STAGE_FN (called with the staging dir; may be `:`) adds. The hash covers
# busybox's version, the /init script, and STAGE_FN's key (the output of `STAGE_FN --key`).
make_initramfs() {
    local name="$1" init="$2" stage_fn="$3" bb key skey="" out stage
    bb="$(busybox_bin)"
    if [[ "$stage_fn" != ":" ]]; then
        skey="$("$stage_fn" --key)" || die "preparing the $name initramfs failed"
    fi
    key="$( { echo "v2 $bb"; cat "$init"; [[ "$stage_fn" == ":" ]] || echo "$skey"; } | short_hash)"
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
    if [[ "$stage_fn" != ":" ]]; then
        "$stage_fn" "$stage" || die "staging the $name initramfs failed"
    fi
    pack_cpio "$stage" "$out"
    rm -rf "$stage"
    echo "$out"
}

build_boot_initramfs() {
    make_initramfs boot "$HERE/init-boot.sh" :
}

# ---- the idxd guest ----------------------------------------------------------------------------------

ACCEL_CONFIG_VERSION="${DSAVMM_ACCEL_CONFIG_VERSION:-3.5.3-1}"
JSONC_VERSION="${DSAVMM_JSONC_VERSION:-0.16-2}"
LIBC_VERSION="${DSAVMM_LIBC_VERSION:-2.36-9+deb12u14}"
# The Debian ABI name of the kernel (6.12.117+deb12, 6.1.0-57) without the flavour, for the header
# packages, and its series (6.12, 6.1) for linux-source. Bookworm's 6.1 has one linux-kbuild-6.1; its
# 6.12 backport one linux-kbuild per ABI.
KABI="${KVER%-amd64}"
KSERIES="$(cut -d. -f1-2 <<<"$KVER")"
KSERIES="${KSERIES%%-*}"
case "$KSERIES" in
6.1) KBUILD_PKG="linux-kbuild-6.1" ;;
*) KBUILD_PKG="linux-kbuild-$KABI" ;;
esac

# kernel_headers: the unpacked linux-headers-$KVER tree, made usable in place (its Makefile includes the
# -common package by absolute path; point that at the unpacked copy). Prints the directory for make -C.
kernel_headers() {
    local arch common kbuild dir mk
    arch="$(deb_x "linux-headers-$KVER" "$KPKG_VERSION")"
    common="$(deb_x "linux-headers-$KABI-common" "$KPKG_VERSION")"
    kbuild="$(deb_x "$KBUILD_PKG" "$KPKG_VERSION")"
    # One tree holding all three, so the relative links (scripts, tools -> ../../lib/linux-kbuild-...)
    # resolve.
    dir="$OUT/headers-$KVER"
    if [[ ! -f "$dir/.done" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        cp -a "$arch/." "$common/." "$kbuild/." "$dir/"
        mk="$dir/usr/src/linux-headers-$KVER/Makefile"
        [[ -f "$mk" ]] || die "no $mk in linux-headers-$KVER"
        sed -i "s|/usr/src/linux-headers-$KABI-common|$dir/usr/src/linux-headers-$KABI-common|g" "$mk"
        touch "$dir/.done"
    fi
    echo "$dir/usr/src/linux-headers-$KVER"
}

# dmatest_source: drivers/dma/dmatest.c from linux-source-$KSERIES (Debian does not build dmatest).
dmatest_source() {
    local deb out src="linux-source-$KSERIES"
    deb="$(deb_get "$src" "$KPKG_VERSION")"
    out="$OUT/src-$(basename "$deb" .deb)/dmatest.c"
    if [[ ! -f "$out" ]]; then
        local tmp
        tmp="$(mktemp -d "$OUT/.src.XXXXXX")"
        # --occurrence stops tar after the one member; dpkg then sees a broken pipe (ignored, the file
        # is checked instead).
        (dpkg --fsys-tarfile "$deb" | tar -xO "./usr/src/$src.tar.xz" \
            | tar -xJf - -C "$tmp" --occurrence=1 "$src/drivers/dma/dmatest.c") 2>/dev/null || true
        [[ -s "$tmp/$src/drivers/dma/dmatest.c" ]] \
            || die "could not extract drivers/dma/dmatest.c from $deb"
        mkdir -p "$(dirname "$out")"
        mv -f "$tmp/$src/drivers/dma/dmatest.c" "$out"
        rm -rf "$tmp"
    fi
    echo "$out"
}

# build_dmatest: dmatest.ko built out of tree against the unpacked headers with gcc-12 (the compiler of
# Debian's 6.12 kernel; bookworm's gcc is 12.2). Keyed by the hash of the source and the kernel version.
build_dmatest() {
    local src hdr key dir cc
    src="$(dmatest_source)"
    key="$( { echo "$KVER $KPKG_VERSION"; cat "$src"; } | short_hash)"
    dir="$OUT/dmatest-$key"
    if [[ -f "$dir/dmatest.ko" ]]; then
        echo "$dir/dmatest.ko"
        return 0
    fi
    hdr="$(kernel_headers)"
    cc="$(command -v gcc-12 || true)"
    [[ -n "$cc" ]] || die "gcc-12 is needed to build dmatest.ko (apt-get install gcc-12)"
    command -v make >/dev/null || die "make is needed to build dmatest.ko"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    cp "$src" "$dir.tmp/dmatest.c"
    echo 'obj-m := dmatest.o' >"$dir.tmp/Kbuild"
    # No module BTF (it needs pahole; the kernel has CONFIG_MODULE_ALLOW_BTF_MISMATCH=y anyway).
    make -s -C "$hdr" M="$dir.tmp" CC="$cc" CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$dir.tmp/build.log" 2>&1 \
        || die "building dmatest.ko failed: $(tail -n 20 "$dir.tmp/build.log")"
    [[ -f "$dir.tmp/dmatest.ko" ]] || die "make produced no dmatest.ko"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    echo "$dir/dmatest.ko"
}

# idxd_modules_dir: the unpacked kernel's drivers/dma/idxd directory.
idxd_modules_dir() {
    local d
    d="$(kernel_pkg_dir)/lib/modules/$KVER/kernel/drivers/dma/idxd"
    # 6.12's modules are xz-compressed, 6.1's are not.
    local m
    for m in idxd idxd_bus; do
        [[ -f "$d/$m.ko.xz" || -f "$d/$m.ko" ]] || die "no $m.ko(.xz) in $d"
    done
    echo "$d"
}

# stage_idxd STAGE | --key: the idxd guest's extra files: /lib/modules/{idxd_bus,idxd,dmatest}.ko,
# /bin/accel-config with libaccel-config, libjson-c, libc and the dynamic loader.
stage_idxd() {
    # Explicit `|| return`: this runs inside `$(...) || die`, where set -e does not apply.
    local ac lac jc libc mods dmatest
    ac="$(deb_x accel-config "$ACCEL_CONFIG_VERSION")" || return 1
    lac="$(deb_x libaccel-config1 "$ACCEL_CONFIG_VERSION")" || return 1
    jc="$(deb_x libjson-c5 "$JSONC_VERSION")" || return 1
    libc="$(deb_x libc6 "$LIBC_VERSION")" || return 1
    mods="$(idxd_modules_dir)" || return 1
    dmatest="$(build_dmatest)" || return 1
    if [[ "${1:-}" == "--key" ]]; then
        echo "idxd v1 $ac $lac $jc $libc $mods"
        sha256sum "$dmatest" | cut -c1-64
        return 0
    fi
    local stage="$1" lib="$1/lib/x86_64-linux-gnu" f
    set -e
    mkdir -p "$stage/lib/modules" "$lib" "$stage/lib64" "$stage/usr/bin" "$stage/var/run"
    for f in idxd_bus idxd; do
        if [[ -f "$mods/$f.ko.xz" ]]; then
            xz -dc "$mods/$f.ko.xz" >"$stage/lib/modules/$f.ko"
        else
            cp "$mods/$f.ko" "$stage/lib/modules/$f.ko"
        fi
    done
    cp "$dmatest" "$stage/lib/modules/dmatest.ko"
    cp -L "$ac/usr/bin/accel-config" "$stage/usr/bin/accel-config"
    for f in "$lac"/usr/lib/x86_64-linux-gnu/libaccel-config.so.1 "$jc"/usr/lib/x86_64-linux-gnu/libjson-c.so.5 \
        "$libc"/lib/x86_64-linux-gnu/libc.so.6 "$libc"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
        [[ -e "$f" ]] || die "missing $f"
        cp -L "$f" "$lib/"
    done
    ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2"
}

build_idxd_initramfs() {
    make_initramfs idxd "$HERE/init-idxd.sh" stage_idxd
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
        idxd)
            local vmlinux idxd
            vmlinux="$(build_vmlinux)"
            idxd="$(build_idxd_initramfs)"
            echo "VMLINUX=$vmlinux"
            echo "IDXD_INITRAMFS=$idxd"
            ;;
        *) die "unknown target '$what' (expected: all or idxd)" ;;
    esac
}

main "$@"
