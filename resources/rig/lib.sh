# shellcheck shell=bash
# Shared helpers for the rig and guest build scripts (sourced, never executed).
#
# Debian packages are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache directory;
# nothing is installed into the system. Everything is keyed by package version or content hash, so a
# second run finds everything in place and returns at once.
#
# Cache: $DSAVMM_CACHE, default <repo>/target/cache.
#   debs/                 downloaded .deb files (file names carry the version)
#   pkg/<deb name>/       one unpacked package per directory (stamp: .done)

RIG_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$RIG_LIB_DIR/../.." && pwd)"
CACHE="${DSAVMM_CACHE:-$REPO_ROOT/target/cache}"
mkdir -p "$CACHE/debs" "$CACHE/pkg"
CACHE="$(cd "$CACHE" && pwd)"

# Pinned versions (override through the environment when Debian supersedes them).
KVER="${DSAVMM_KVER:-6.12.117+deb12-amd64}"
KPKG_VERSION="${DSAVMM_KPKG_VERSION:-6.12.117-1~deb12u1}"
BUSYBOX_VERSION="${DSAVMM_BUSYBOX_VERSION:-1:1.35.0-4+deb12u1+b1}"
QEMU_VERSION="${DSAVMM_QEMU_VERSION:-1:7.2+dfsg-7+deb12u18+b3}"
QEMU_DATA_VERSION="${DSAVMM_QEMU_DATA_VERSION:-1:7.2+dfsg-7+deb12u18}"

log() { echo "[$(basename "$0")] $*" >&2; }
die() { echo "[$(basename "$0")] error: $*" >&2; exit 1; }

# shellcheck source=apt.sh
source "$RIG_LIB_DIR/apt.sh"

# sha256 of stdin, first 16 hex digits.
short_hash() { sha256sum | cut -c1-16; }

# deb_get NAME [VERSION]: print the path of NAME's .deb, downloading it into the cache if missing.
# With a VERSION that apt no longer offers, falls back to the candidate version with a warning.
deb_get() {
    local name="$1" version="${2:-}" stamp path
    stamp="$CACHE/debs/.${name}=${version:-candidate}"
    if [[ -f "$stamp" ]] && path="$(<"$stamp")" && [[ -f "$CACHE/debs/$path" ]]; then
        echo "$CACHE/debs/$path"
        return 0
    fi
    local spec="$name"
    [[ -n "$version" ]] && spec="$name=$version"
    if ! apt_download "$CACHE/debs" "$spec"; then
        if [[ -n "$version" ]]; then
            log "warning: $spec not available; using the candidate version"
            apt_download "$CACHE/debs" "$name" || die "apt-get download $name failed"
        else
            die "apt-get download $name failed"
        fi
    fi
    # apt-get names the file <name>_<version with ':' as %3a>_<arch>.deb; take the newest match.
    path="$(cd "$CACHE/debs" && ls -t "${name}"_*.deb 2>/dev/null | head -n1)"
    [[ -n "$path" ]] || die "apt-get download $spec produced no file"
    echo "$path" >"$stamp"
    echo "$CACHE/debs/$path"
}

# deb_x NAME [VERSION]: print the directory holding NAME's unpacked contents.
deb_x() {
    local deb dir
    # `$(...)` does not inherit set -e: without this check a failed download would leave `deb`
    # empty and the line below would name (and remove) the whole unpacked cache.
    deb="$(deb_get "$@")" || exit 1
    [[ -n "$deb" ]] || die "no .deb for $*"
    dir="$CACHE/pkg/$(basename "$deb" .deb)"
    if [[ ! -f "$dir/.done" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg -x "$deb" "$dir" || die "dpkg -x $deb failed"
        touch "$dir/.done"
    fi
    echo "$dir"
}

# busybox_bin: path of the static busybox from busybox-static.
busybox_bin() {
    local dir
    dir="$(deb_x busybox-static "$BUSYBOX_VERSION")"
    [[ -x "$dir/bin/busybox" ]] || die "busybox-static has no bin/busybox in $dir"
    echo "$dir/bin/busybox"
}

# kernel_pkg_dir: the unpacked linux-image package (bzImage in boot/, modules in lib/modules/).
kernel_pkg_dir() {
    deb_x "linux-image-$KVER" "$KPKG_VERSION"
}

# busybox_links DIR BUSYBOX: create DIR/<applet> -> busybox links for every applet, at build time (running
# `busybox --install` in the guest costs seconds under nested emulation).
busybox_links() {
    local dir="$1" bb="$2" a
    for a in $("$bb" --list); do
        [[ -e "$dir/$a" ]] || ln -s busybox "$dir/$a"
    done
}

# cpio_console_node: write to stdout a newc archive holding /dev and the /dev/console node
# (char 5:1), so that no root rights (mknod) are needed to build an initramfs. The kernel
# unpacks concatenated archives in order.
cpio_console_node() {
    local ino=1
    _newc_entry() { # name mode rdevmajor rdevminor
        local name="$1" mode="$2" maj="$3" min="$4" namesize hdr pad
        namesize=$(( ${#name} + 1 ))
        hdr="$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
            "$ino" "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0)"
        printf '%s%s\0' "$hdr" "$name"
        pad=$(( (4 - (110 + namesize) % 4) % 4 ))
        head -c "$pad" /dev/zero
        ino=$((ino + 1))
    }
    _newc_entry dev $((0040755)) 0 0
    _newc_entry dev/console $((0020600)) 5 1
    _newc_entry TRAILER!!! 0 0 0
}

# pack_cpio DIR OUT: pack DIR as an uncompressed newc archive (with /dev/console) into OUT atomically.
pack_cpio() {
    local dir="$1" out="$2" bb
    bb="$(busybox_bin)"
    {
        cpio_console_node
        (cd "$dir" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null)
    } >"$out.tmp.$$" || die "packing $dir failed"
    mv -f "$out.tmp.$$" "$out"
}
