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
#   DPDK_INITRAMFS   (target `dpdk` only) the DPDK guest (init-dpdk.sh): Debian's unmodified dpdk-test
#                    (dpdk-dev 22.11) with the idxd PMD and every library they load, dpdk-copy-bench
#                    (dpdk-copy-bench.c, built against libdpdk-dev with gcc-12), and the kernel's
#                    uio/uio_pci_generic modules (the vDSA is handed to DPDK through uio_pci_generic)
#
# Usage: build.sh [all|idxd|dpdk]   (all, the default: the four above; idxd: VMLINUX and IDXD_INITRAMFS;
#                                    dpdk: VMLINUX and DPDK_INITRAMFS)
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

# stage_module DIR NAME DEST: DIR/NAME.ko(.xz) uncompressed into DEST/NAME.ko (6.12's modules are
# xz-compressed, 6.1's are not).
stage_module() {
    if [[ -f "$1/$2.ko.xz" ]]; then
        xz -dc "$1/$2.ko.xz" >"$3/$2.ko"
    else
        cp "$1/$2.ko" "$3/$2.ko"
    fi
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
    # Every command ends in `|| return 1`: the caller runs this as `"$stage_fn" "$stage" || die`,
    # where bash ignores set -e inside the function.
    local stage="$1" lib="$1/lib/x86_64-linux-gnu" f
    mkdir -p "$stage/lib/modules" "$lib" "$stage/lib64" "$stage/usr/bin" "$stage/var/run" || return 1
    for f in idxd_bus idxd; do
        stage_module "$mods" "$f" "$stage/lib/modules" || return 1
    done
    cp "$dmatest" "$stage/lib/modules/dmatest.ko" || return 1
    cp -L "$ac/usr/bin/accel-config" "$stage/usr/bin/accel-config" || return 1
    for f in "$lac"/usr/lib/x86_64-linux-gnu/libaccel-config.so.1 "$jc"/usr/lib/x86_64-linux-gnu/libjson-c.so.5 \
        "$libc"/lib/x86_64-linux-gnu/libc.so.6 "$libc"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
        [[ -e "$f" ]] || die "missing $f"
        cp -L "$f" "$lib/" || return 1
    done
    ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2" || return 1
}

build_idxd_initramfs() {
    make_initramfs idxd "$HERE/init-idxd.sh" stage_idxd
}

# ---- the DPDK guest -----------------------------------------------------------------------------------

DPDK_VERSION="${DSAVMM_DPDK_VERSION:-22.11.11-0+deb12u1}"
UIO_MODULES=(uio uio_pci_generic)

# dpdk_soname_pkg SONAME: the bookworm package that ships SONAME. DPDK's own libraries follow Debian's
# rule (librte_net_mlx5.so.23 -> librte-net-mlx5-23, librte_eal.so.23 -> librte-eal23); the few system
# libraries dpdk-test and its libraries load are listed.
dpdk_soname_pkg() {
    local s="$1" b
    case "$s" in
    librte_*.so.*)
        b="${s#librte_}"
        b="${b%%.so.*}"
        b="${b//_/-}"
        if [[ "$b" =~ [0-9]$ ]]; then echo "librte-$b-23"; else echo "librte-${b}23"; fi
        ;;
    libbsd.so.0) echo libbsd0 ;;
    libmd.so.0) echo libmd0 ;;
    libelf.so.1) echo libelf1 ;;
    libz.so.1) echo zlib1g ;;
    libfdt.so.1) echo libfdt1 ;;
    libjansson.so.4) echo libjansson4 ;;
    libnuma.so.1) echo libnuma1 ;;
    libpcap.so.0.8) echo libpcap0.8 ;;
    libdbus-1.so.3) echo libdbus-1-3 ;;
    libsystemd.so.0) echo libsystemd0 ;;
    libcap.so.2) echo libcap2 ;;
    libgcrypt.so.20) echo libgcrypt20 ;;
    libgpg-error.so.0) echo libgpg-error0 ;;
    liblzma.so.5) echo liblzma5 ;;
    libzstd.so.1) echo libzstd1 ;;
    liblz4.so.1) echo liblz4-1 ;;
    *) return 1 ;;
    esac
}

# elf_needed FILE: the DT_NEEDED sonames of FILE.
elf_needed() {
    local d
    d="$(readelf -d "$1")" || return 1
    sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$d"
}

# dpdk_closure: print `SONAME PATH` for every shared library that dpdk-test and the two DMA drivers it
# is given with -d (idxd, and the skeleton of the dmadev API tests) load, transitively, each from the
# unpacked package that ships it; libc's own libraries are left to stage_dpdk. Fails naming a library
# no package is known for.
dpdk_closure() {
    command -v readelf >/dev/null || { echo "readelf (binutils) is needed to stage DPDK" >&2; return 1; }
    local dev idxd skel
    dev="$(deb_x dpdk-dev "$DPDK_VERSION")" || return 1
    idxd="$(deb_x librte-dma-idxd23 "$DPDK_VERSION")" || return 1
    skel="$(deb_x librte-dma-skeleton23 "$DPDK_VERSION")" || return 1
    local todo=("$dev/usr/bin/dpdk-test" "$idxd/usr/lib/x86_64-linux-gnu/librte_dma_idxd.so.23"
        "$skel/usr/lib/x86_64-linux-gnu/librte_dma_skeleton.so.23")
    local -A found=()
    local f s pkg dir path
    echo "librte_dma_idxd.so.23 ${todo[1]}"
    echo "librte_dma_skeleton.so.23 ${todo[2]}"
    while ((${#todo[@]})); do
        f="${todo[0]}"
        todo=("${todo[@]:1}")
        [[ -e "$f" ]] || { echo "missing $f" >&2; return 1; }
        local needed
        needed="$(elf_needed "$f")" || { echo "readelf failed on $f" >&2; return 1; }
        for s in $needed; do
            [[ -n "${found[$s]:-}" ]] && continue
            case "$s" in libc.so.6 | libm.so.6 | ld-linux-x86-64.so.2) continue ;; esac
            pkg="$(dpdk_soname_pkg "$s")" || { echo "no package known for $s (needed by $f)" >&2; return 1; }
            if [[ "$pkg" == librte-* ]]; then
                dir="$(deb_x "$pkg" "$DPDK_VERSION")" || return 1
            else
                dir="$(deb_x "$pkg")" || return 1
            fi
            path="$(find "$dir/usr/lib/x86_64-linux-gnu" "$dir/lib/x86_64-linux-gnu" -maxdepth 1 -name "$s" 2>/dev/null | head -n1)"
            [[ -n "$path" ]] || { echo "$pkg has no $s" >&2; return 1; }
            found[$s]="$path"
            todo+=("$path")
            echo "$s $path"
        done
    done
}

# build_dpdk_bench: dpdk-copy-bench (dpdk-copy-bench.c) built with gcc-12 against libdpdk-dev's headers
# and the DPDK libraries of dpdk_closure, with the compiler flags of libdpdk.pc (-march=corei7 and
# rte_config.h). Keyed by the hash of the source and the DPDK version.
build_dpdk_bench() {
    local src="$HERE/dpdk-copy-bench.c" key dir cc hdr closure libdirs
    cc="$(command -v gcc-12 || true)"
    [[ -n "$cc" ]] || die "gcc-12 is needed to build dpdk-copy-bench (apt-get install gcc-12)"
    hdr="$(deb_x libdpdk-dev "$DPDK_VERSION")" || return 1
    # Keyed by everything that makes the binary: the source, this function (the flags), the
    # compiler and the unpacked headers' package (its directory names the version).
    key="$( { echo "$hdr"; "$cc" --version | head -n1; declare -f build_dpdk_bench; cat "$src"; } | short_hash)"
    dir="$OUT/dpdk-bench-$key"
    if [[ -x "$dir/dpdk-copy-bench" ]]; then
        echo "$dir/dpdk-copy-bench"
        return 0
    fi
    closure="$(dpdk_closure)" || return 1
    libdirs="$(awk '{ sub("/[^/]*$", "", $2); print $2 }' <<<"$closure" | sort -u)"
    local eal dmadev
    eal="$(awk '$1 == "librte_eal.so.23" { print $2 }' <<<"$closure")"
    dmadev="$(awk '$1 == "librte_dmadev.so.23" { print $2 }' <<<"$closure")"
    [[ -n "$eal" && -n "$dmadev" ]] || die "dpdk_closure names no librte_eal/librte_dmadev"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    # shellcheck disable=SC2046
    # dmadev is still experimental API in DPDK 22.11.
    "$cc" -O2 -Wall -Werror -DALLOW_EXPERIMENTAL_API -include rte_config.h -march=corei7 \
        -I"$hdr/usr/include/x86_64-linux-gnu/dpdk" -I"$hdr/usr/include/dpdk" \
        -o "$dir.tmp/dpdk-copy-bench" "$src" "$eal" "$dmadev" \
        $(sed 's/^/-Wl,-rpath-link,/' <<<"$libdirs") >"$dir.tmp/build.log" 2>&1 \
        || die "building dpdk-copy-bench failed: $(tail -n 20 "$dir.tmp/build.log")"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    echo "$dir/dpdk-copy-bench"
}

# uio_modules_dir: the unpacked kernel's drivers/uio directory (uio, uio_pci_generic).
uio_modules_dir() {
    local d m
    d="$(kernel_pkg_dir)/lib/modules/$KVER/kernel/drivers/uio"
    for m in "${UIO_MODULES[@]}"; do
        [[ -f "$d/$m.ko.xz" || -f "$d/$m.ko" ]] || die "no $m.ko(.xz) in $d"
    done
    echo "$d"
}

# stage_dpdk STAGE | --key: the DPDK guest's extra files: Debian's dpdk-test (dpdk-dev) and our
# dpdk-copy-bench in /usr/bin, every
# library it and the idxd/skeleton DMA drivers need in /lib/x86_64-linux-gnu (with libc, libm and the
# loader), and /lib/modules/{uio,uio_pci_generic}.ko.
stage_dpdk() {
    local libc mods closure dev bench
    libc="$(deb_x libc6 "$LIBC_VERSION")" || return 1
    dev="$(deb_x dpdk-dev "$DPDK_VERSION")" || return 1
    mods="$(uio_modules_dir)" || return 1
    closure="$(dpdk_closure)" || return 1
    bench="$(build_dpdk_bench)" || return 1
    if [[ "${1:-}" == "--key" ]]; then
        echo "dpdk v1 $libc $dev $mods"
        echo "$closure"
        sha256sum "$bench" | cut -c1-64
        return 0
    fi
    # `|| return 1` throughout, as in stage_idxd (set -e does not apply here).
    local stage="$1" lib="$1/lib/x86_64-linux-gnu" f s path
    mkdir -p "$stage/lib/modules" "$lib" "$stage/lib64" "$stage/usr/bin" "$stage/var/run" || return 1
    for f in "${UIO_MODULES[@]}"; do
        stage_module "$mods" "$f" "$stage/lib/modules" || return 1
    done
    cp -L "$dev/usr/bin/dpdk-test" "$stage/usr/bin/dpdk-test" || return 1
    cp "$bench" "$stage/usr/bin/dpdk-copy-bench" || return 1
    while read -r s path; do
        cp -L "$path" "$lib/$s" || return 1
    done <<<"$closure"
    for f in libc.so.6 libm.so.6 ld-linux-x86-64.so.2; do
        [[ -e "$libc/lib/x86_64-linux-gnu/$f" ]] || die "missing $f in libc6"
        cp -L "$libc/lib/x86_64-linux-gnu/$f" "$lib/" || return 1
    done
    ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2" || return 1
}

build_dpdk_initramfs() {
    make_initramfs dpdk "$HERE/init-dpdk.sh" stage_dpdk
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
        dpdk)
            local vmlinux dpdk
            vmlinux="$(build_vmlinux)"
            dpdk="$(build_dpdk_initramfs)"
            echo "VMLINUX=$vmlinux"
            echo "DPDK_INITRAMFS=$dpdk"
            ;;
        *) die "unknown target '$what' (expected: all, idxd or dpdk)" ;;
    esac
}

main "$@"
