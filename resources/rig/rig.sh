#!/usr/bin/env bash
# The nested KVM test rig: QEMU 7.2 (TCG, -cpu max: an emulated AMD CPU with SVM and nested paging) boots
# Debian's 6.12 kernel as L1, L1 loads kvm_amd and runs dsavmm on its /dev/kvm, dsavmm boots the L2 guest.
# See shared/notes/nested-rig.md. Nothing is installed: packages are unpacked into $DSAVMM_CACHE
# (default <repo>/target/cache) and everything is keyed by version or content hash.
#
# Usage:
#   rig.sh fetch                        download and unpack QEMU, the L1 kernel, its modules and busybox
#   rig.sh build [OPTIONS]              build the L1 initramfs; print KEY=VALUE lines (see below)
#   rig.sh run   [OPTIONS]              build, then run QEMU in the foreground (for people; tests use build)
# OPTIONS:
#   --dsavmm BIN                        put BIN into L1 as /bin/dsavmm, with every library ldd lists
#   --file DEST=SRC                     put host file SRC into L1 at DEST (e.g. /l2/vmlinux=...)
#   --run 'CMD'                         a shell command line for L1 to run (repeatable, in order)
#   --runs FILE                         the same, one command line per line of FILE
#   --with-qemu                         also put QEMU into L1 as /bin/qemu-system-x86_64 (a reference VMM
#                                       for L1's KVM; firmware under /rig/qemu-fw)
#   --vfio-user SOCKET                  L1 on q35 with an intel-iommu (caching mode) and a vfio-user-pci
#                                       device served at SOCKET on the host (a dsavmm dsa-server): the
#                                       "physical" DSA L1's kernel VFIO owns; L1 loads the vfio modules
#                                       and boots with intel_iommu=on (needs QEMU >= 10.1)
# Environment: DSAVMM_CACHE (cache dir), DSAVMM_RIG_QEMU (use this qemu-system-x86_64 for L1 instead of
# Debian's, e.g. one whose TCG executes MOVDIR64B), DSAVMM_RIG_QEMU_FW (its firmware dir for -L instead of
# Debian's qemu-system-data), DSAVMM_RIG_SMP (L1's vCPUs, default 1), DSAVMM_RIG_TSC_KHZ (host TSC kHz, else from dmesg or
# /proc/cpuinfo).
# `build` prints: QEMU (the binary), QEMU_ENV=<NAME=VALUE> once per environment variable QEMU needs,
# L1_KERNEL, L1_INITRAMFS, then QEMU_ARG=<arg> once per argument of the QEMU command line (in order).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

RIG="$CACHE/rig"
mkdir -p "$RIG"
MODULES=(irqbypass ccp kvm kvm-amd vfio vfio_iommu_type1 vfio-pci-core vfio-pci)

# qemu_setup: unpack qemu-system-x86 and qemu-system-data plus the shared libraries the system lacks;
# sets QEMU_BIN, QEMU_LIBDIR (symlinks to the unpacked libraries), QEMU_FW, QEMU_MODDIR (TCG is a
# loadable module in Debian's build, from qemu-system-common).
qemu_setup() {
    local sys data common
    sys="$(deb_x qemu-system-x86 "$QEMU_VERSION")"
    data="$(deb_x qemu-system-data "$QEMU_DATA_VERSION")"
    common="$(deb_x qemu-system-common "$QEMU_VERSION")"
    QEMU_MODDIR="$common/usr/lib/x86_64-linux-gnu/qemu"
    [[ -f "$QEMU_MODDIR/accel-tcg-x86_64.so" ]] || die "no accel-tcg-x86_64.so in qemu-system-common"
    QEMU_BIN="$sys/usr/bin/qemu-system-x86_64"
    QEMU_FW="$data/usr/share/qemu"
    QEMU_LIBDIR="$RIG/qemu-lib-$(basename "$sys")"
    [[ -x "$QEMU_BIN" ]] || die "no $QEMU_BIN"
    if [[ -n "${DSAVMM_RIG_QEMU:-}" ]]; then
        # Another qemu-system-x86_64 (e.g. a build with MOVDIR64B in TCG); Debian's firmware stays.
        [[ -x "$DSAVMM_RIG_QEMU" ]] || die "DSAVMM_RIG_QEMU=$DSAVMM_RIG_QEMU is not executable"
        QEMU_BIN="$DSAVMM_RIG_QEMU"
    fi
    if [[ -n "${DSAVMM_RIG_QEMU_FW:-}" ]]; then
        [[ -f "$DSAVMM_RIG_QEMU_FW/bios-microvm.bin" ]] \
            || die "DSAVMM_RIG_QEMU_FW=$DSAVMM_RIG_QEMU_FW has no bios-microvm.bin"
        QEMU_FW="$DSAVMM_RIG_QEMU_FW"
    fi
    if [[ -f "$QEMU_LIBDIR/.done" ]]; then
        return 0
    fi
    rm -rf "$QEMU_LIBDIR"
    mkdir -p "$QEMU_LIBDIR"
    # Breadth-first over Depends: every lib* package that is not installed is unpacked, and its own
    # Depends are followed. Only the first alternative of each dependency is taken.
    local -a queue=("$(deb_get qemu-system-x86 "$QEMU_VERSION")")
    local -A seen=()
    while ((${#queue[@]})); do
        local deb="${queue[0]}"
        queue=("${queue[@]:1}")
        local dep
        while read -r dep; do
            [[ -n "$dep" && "$dep" == lib* && -z "${seen[$dep]:-}" ]] || continue
            seen[$dep]=1
            if dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed'; then
                continue
            fi
            log "unpacking missing library package $dep"
            local dir
            dir="$(deb_x "$dep")"
            find "$dir" -name '*.so*' \( -type f -o -type l \) -exec ln -sf {} "$QEMU_LIBDIR/" \;
            queue+=("$(deb_get "$dep")")
        done < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/ //g')
    done
    local missing
    missing="$(LD_LIBRARY_PATH="$QEMU_LIBDIR" ldd "$QEMU_BIN" | grep 'not found' || true)"
    [[ -z "$missing" ]] || die "QEMU still lacks libraries after unpacking its dependencies: $missing"
    touch "$QEMU_LIBDIR/.done"
}

# modules_setup: decompressed kvm modules in $MODDIR.
modules_setup() {
    local kdir m f
    kdir="$(kernel_pkg_dir)"
    L1_KERNEL="$kdir/boot/vmlinuz-$KVER"
    MODDIR="$RIG/modules-$KVER-v2"
    [[ -f "$MODDIR/.done" ]] && return 0
    rm -rf "$MODDIR"
    mkdir -p "$MODDIR"
    for m in "${MODULES[@]}"; do
        f="$(find "$kdir/lib/modules/$KVER/kernel" -name "$m.ko.xz" | head -n1)"
        [[ -n "$f" ]] || die "module $m not found in linux-image-$KVER"
        xz -dc "$f" >"$MODDIR/$m.ko"
    done
    touch "$MODDIR/.done"
}

# base_cpio: busybox, modules and /init; sets L1_BASE.
base_cpio() {
    local bb key stage
    bb="$(busybox_bin)"
    key="$( { echo "base v3 $bb $KVER ${MODULES[*]}"; cat "$HERE/l1-init.sh"; } | short_hash)"
    L1_BASE="$RIG/l1-base-$key.cpio"
    [[ -f "$L1_BASE" ]] && return 0
    stage="$(mktemp -d "$RIG/.stage-base.XXXXXX")"
    mkdir -p "$stage/bin" "$stage/lib/modules/rig" "$stage/rig" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp"
    cp "$bb" "$stage/bin/busybox"
    busybox_links "$stage/bin" "$bb"
    cp "$MODDIR"/*.ko "$stage/lib/modules/rig/"
    install -m 0755 "$HERE/l1-init.sh" "$stage/init"
    pack_cpio "$stage" "$L1_BASE"
    rm -rf "$stage"
}

# stage_program SRC DEST STAGE [LD_LIBRARY_PATH]: copy a dynamically linked program and every
# library ldd lists (flattened into /lib/x86_64-linux-gnu, the loader at its own path).
stage_program() {
    local src="$1" dest="$2" stage="$3" ldpath="${4:-}" line lib
    mkdir -p "$stage/$(dirname "$dest")" "$stage/lib/x86_64-linux-gnu"
    cp -L "$src" "$stage/$dest"
    chmod 0755 "$stage/$dest"
    local out
    out="$(LD_LIBRARY_PATH="$ldpath" ldd "$src" 2>&1)" || {
        # "not a dynamic executable" is fine (static binary).
        grep -q 'not a dynamic executable' <<<"$out" && return 0
        die "ldd $src failed: $out"
    }
    if grep -q 'not found' <<<"$out"; then
        die "ldd $src: missing libraries: $(grep 'not found' <<<"$out")"
    fi
    while read -r line; do
        lib=""
        if [[ "$line" == *"=> /"* ]]; then
            lib="$(sed -e 's/.*=> //' -e 's/ (0x.*//' <<<"$line")"
            cp -L "$lib" "$stage/lib/x86_64-linux-gnu/$(basename "$lib")"
        elif [[ "$line" == /* ]]; then
            lib="${line%% (*}"
            mkdir -p "$stage/$(dirname "$lib")"
            cp -L "$lib" "$stage/$lib"
        fi
    done <<<"$out"
}

# file_key FILE: content hash of a file (cached by path, size and mtime so big kernels are hashed once).
file_key() {
    local f="$1" meta memo
    meta="$(stat -L -c '%s %Y' "$f")" || die "cannot stat $f"
    memo="$RIG/.hash-$(echo "$(readlink -f "$f") $meta" | short_hash)"
    if [[ ! -f "$memo" ]]; then
        sha256sum <"$f" | cut -c1-64 >"$memo"
    fi
    cat "$memo"
}

DSAVMM=""
WITH_QEMU=0
VFIO_USER=""
declare -a FILES=() RUNS=()

parse_opts() {
    while (($#)); do
        case "$1" in
            --dsavmm) DSAVMM="$2"; shift 2 ;;
            --file) FILES+=("$2"); shift 2 ;;
            --run) RUNS+=("$2"); shift 2 ;;
            --runs)
                local l
                while IFS= read -r l || [[ -n "$l" ]]; do RUNS+=("$l"); done <"$2"
                shift 2 ;;
            --with-qemu) WITH_QEMU=1; shift ;;
            --vfio-user) VFIO_USER="$2"; shift 2 ;;
            *) die "unknown option '$1' (see the header of $0)" ;;
        esac
    done
    if [[ -n "$DSAVMM" ]]; then
        [[ -f "$DSAVMM" ]] || die "--dsavmm $DSAVMM: no such file"
    fi
    local f
    for f in "${FILES[@]}"; do
        [[ "$f" == /*=* ]] || die "--file wants DEST=SRC with an absolute DEST, got '$f'"
        [[ -f "${f#*=}" ]] || die "--file $f: no such file ${f#*=}"
    done
}

# payload_cpio: dsavmm, the files, the runs; concatenated with the base into L1_INITRAMFS.
payload_cpio() {
    local key stage f
    key="$( {
        echo "payload v2 $L1_BASE $WITH_QEMU ${VFIO_USER:+vfio}"
        [[ -z "$DSAVMM" ]] || echo "dsavmm $(file_key "$DSAVMM")"
        for f in "${FILES[@]}"; do echo "file ${f%%=*} $(file_key "${f#*=}")"; done
        ((${#RUNS[@]} == 0)) || printf 'run %s\n' "${RUNS[@]}"
        ((WITH_QEMU == 0)) || echo "qemu $QEMU_BIN"
    } | short_hash)"
    L1_INITRAMFS="$RIG/l1-$key.cpio"
    if [[ -f "$L1_INITRAMFS" ]]; then
        touch "$L1_INITRAMFS"
        return 0
    fi
    stage="$(mktemp -d "$RIG/.stage-payload.XXXXXX")"
    mkdir -p "$stage/rig"
    [[ -z "$DSAVMM" ]] || stage_program "$DSAVMM" /bin/dsavmm "$stage"
    if ((WITH_QEMU)); then
        stage_program "$QEMU_BIN" /bin/qemu-system-x86_64 "$stage" "$QEMU_LIBDIR"
        mkdir -p "$stage/rig/qemu-fw"
        local fw
        for fw in bios-microvm.bin linuxboot_dma.bin pvh.bin kvmvapic.bin multiboot_dma.bin; do
            cp -L "$QEMU_FW/$fw" "$stage/rig/qemu-fw/"
        done
    fi
    for f in "${FILES[@]}"; do
        mkdir -p "$stage/$(dirname "${f%%=*}")"
        cp -L "${f#*=}" "$stage/${f%%=*}"
    done
    ((${#RUNS[@]} == 0)) || printf '%s\n' "${RUNS[@]}" >"$stage/rig/runs"
    [[ -z "$VFIO_USER" ]] || touch "$stage/rig/vfio"
    pack_cpio "$stage" "$stage.cpio"
    rm -rf "$stage"
    cat "$L1_BASE" "$stage.cpio" >"$L1_INITRAMFS.tmp.$$"
    rm -f "$stage.cpio"
    mv -f "$L1_INITRAMFS.tmp.$$" "$L1_INITRAMFS"
    # Keep the cache bounded: the 4 most recent L1 initramfs images stay.
    ls -t "$RIG"/l1-[0-9a-f]*.cpio 2>/dev/null | tail -n +5 | xargs -r rm -f
}

# tsc_khz: the host's TSC frequency in kHz (L1 needs tsc_early_khz=, see nested-rig.md).
tsc_khz() {
    if [[ -n "${DSAVMM_RIG_TSC_KHZ:-}" ]]; then
        echo "$DSAVMM_RIG_TSC_KHZ"
        return 0
    fi
    local mhz
    mhz="$(dmesg 2>/dev/null | sed -n -e 's/.*Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' \
        -e 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -n1 || true)"
    [[ -n "$mhz" ]] || mhz="$(sed -n 's/^cpu MHz[[:space:]]*: \([0-9.]*\)/\1/p' /proc/cpuinfo | head -n1)"
    [[ -n "$mhz" ]] || die "cannot find the host TSC frequency (set DSAVMM_RIG_TSC_KHZ)"
    awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}

qemu_args() {
    local append
    append="console=ttyS0 quiet tsc_early_khz=$(tsc_khz) cryptomgr.notests tsc=reliable no_timer_check"
    append+=" i8042.noaux i8042.nokbd panic=-1"
    if [[ -n "$VFIO_USER" ]]; then
        # q35 with a remapping vIOMMU in caching mode (what VFIO in L1 needs), placed before the
        # vfio-user device; guest RAM a shared memfd the server can map (docs/vfio.md).
        append+=" intel_iommu=on"
        QEMU_ARGS=(-L "$QEMU_FW" -M q35,memory-backend=mem -accel tcg -cpu max -smp "${DSAVMM_RIG_SMP:-1}" -m 2G
            -object memory-backend-memfd,id=mem,size=2G,share=on
            -device intel-iommu,caching-mode=on
            -device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$VFIO_USER\",\"type\":\"unix\"}}"
            -nographic -no-reboot -nodefaults -serial stdio
            -kernel "$L1_KERNEL" -initrd "$L1_INITRAMFS" -append "$append")
        return 0
    fi
    QEMU_ARGS=(-L "$QEMU_FW" -M microvm -accel tcg -cpu max -smp "${DSAVMM_RIG_SMP:-1}" -m 2G
        -nographic -no-reboot -nodefaults -serial stdio
        -kernel "$L1_KERNEL" -initrd "$L1_INITRAMFS" -append "$append")
}

fetch() {
    qemu_setup
    modules_setup
    busybox_bin >/dev/null
}

build() {
    parse_opts "$@"
    fetch
    base_cpio
    payload_cpio
    qemu_args
}

case "${1:-}" in
    fetch)
        fetch
        echo "QEMU=$QEMU_BIN"
        echo "QEMU_ENV=LD_LIBRARY_PATH=$QEMU_LIBDIR"
        echo "QEMU_ENV=QEMU_MODULE_DIR=$QEMU_MODDIR"
        echo "L1_KERNEL=$L1_KERNEL"
        ;;
    build)
        shift
        build "$@"
        echo "QEMU=$QEMU_BIN"
        echo "QEMU_ENV=LD_LIBRARY_PATH=$QEMU_LIBDIR"
        echo "QEMU_ENV=QEMU_MODULE_DIR=$QEMU_MODDIR"
        echo "L1_KERNEL=$L1_KERNEL"
        echo "L1_INITRAMFS=$L1_INITRAMFS"
        printf 'QEMU_ARG=%s\n' "${QEMU_ARGS[@]}"
        ;;
    run)
        shift
        build "$@"
        log "starting: qemu-system-x86_64 ${QEMU_ARGS[*]}"
        LD_LIBRARY_PATH="$QEMU_LIBDIR" QEMU_MODULE_DIR="$QEMU_MODDIR" exec "$QEMU_BIN" "${QEMU_ARGS[@]}" </dev/null
        ;;
    *) die "usage: rig.sh fetch | build [OPTIONS] | run [OPTIONS] (see the header of $0)" ;;
esac
