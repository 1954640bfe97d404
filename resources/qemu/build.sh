#!/usr/bin/env bash
# Build the nested test rig's QEMU: a Debian qemu source package with a
# MOVDIR64B/MOVDIRI patch for TCG, x86_64-softmmu only, every optional feature off.
#
# DSAVMM_QEMU_VERSION selects the source (default 10.2):
#   7.2   Debian bookworm qemu 1:7.2+dfsg-7+deb12u18 + movdir64b.patch,
#         system meson, firmware from bookworm's qemu-system-data.
#   10.2  Debian sid qemu 1:10.2.2+ds-1 + movdir64b-10.2.patch (has the
#         vfio-user-pci client), meson 1.9.0 in a venv (pip), firmware from
#         bookworm's qemu-system-data plus bookworm's seabios (bios-256k.bin
#         for -M q35).
#
# Output (stdout, exactly two lines; all progress goes to stderr):
#   <cache>/bin/qemu-system-x86_64
#   <cache>/share/qemu            (firmware dir for -L: bios-microvm.bin, pvh.bin, ...)
# When the cache dir is already complete it prints those lines and exits at once.
#
# Cache dir: $DSAVMM_QEMU_CACHE if set, else
#   ${DSAVMM_CACHE:-<repo>/target/cache}/qemu-<key>
# where <key> = first 16 hex digits of sha256(patch, build.sh, source and firmware
# versions); the selected version is part of the key.
# Downloads (source packages, firmware .debs, private apt list dirs, the meson venv) are kept in
#   ${DSAVMM_CACHE:-<repo>/target/cache}/qemu-downloads
# and reused.  Set DSAVMM_QEMU_JOBS to change the build parallelism (default 2).
#
# Needs: root (or the build deps already installed) and network for the first build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
jobs="${DSAVMM_QEMU_JOBS:-2}"

log() { echo "qemu/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

qemu_version="${DSAVMM_QEMU_VERSION:-10.2}"
# Firmware always comes from bookworm: qemu-system-data 7.2 (qboot as
# bios-microvm.bin, pvh.bin, linuxboot_dma.bin, ...); 10.2 also takes seabios.
data_version="1:7.2+dfsg-7+deb12u18"
case "$qemu_version" in
7.2)
    # The rig's qemu-system-x86 is 1:7.2+dfsg-7+deb12u18+b3, a binNMU of this source.
    src_version="1:7.2+dfsg-7+deb12u18"
    src_upstream="7.2+dfsg"
    src_suite=bookworm
    patch_file="$here/movdir64b.patch"
    seabios_version=""
    meson_version=""            # system meson (bookworm 1.0.1)
    ;;
10.2)
    # Only sid's 10.2.2 downloads from the mirror (its 11.1.x files gave 404).
    src_version="1:10.2.2+ds-1"
    src_upstream="10.2.2+ds"
    src_suite=sid
    patch_file="$here/movdir64b-10.2.patch"
    seabios_version="1.16.2-1"
    meson_version="1.9.0"       # QEMU 10.2 needs >= 1.5; the +ds tarball has no wheels
    ;;
*)
    die "DSAVMM_QEMU_VERSION=$qemu_version: supported are 7.2 and 10.2"
    ;;
esac

cache_root="${DSAVMM_CACHE:-$repo/target/cache}"
versions="$src_version $data_version"
[[ -z "$seabios_version" ]] || versions+=" seabios $seabios_version meson $meson_version"
key="$( { cat "$patch_file" "$here/build.sh"; echo "$versions"; } \
        | sha256sum | cut -c1-16)"
dest="${DSAVMM_QEMU_CACHE:-$cache_root/qemu-$key}"
downloads="$cache_root/qemu-downloads"

print_result() {
    echo "$dest/bin/qemu-system-x86_64"
    echo "$dest/share/qemu"
}

if [[ -f "$dest/.complete" && -x "$dest/bin/qemu-system-x86_64" ]]; then
    print_result
    exit 0
fi

mkdir -p "$(dirname "$dest")" "$downloads"
# One builder at a time per cache dir; a second caller waits and reuses the result.
exec 9>"$dest.lock"
flock 9
if [[ -f "$dest/.complete" && -x "$dest/bin/qemu-system-x86_64" ]]; then
    print_result
    exit 0
fi

# --- build dependencies -------------------------------------------------------
deps=(ninja-build meson libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev flex bison
      pkg-config dpkg-dev xz-utils patch)
[[ -z "$meson_version" ]] || deps+=(python3-venv)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing build deps (${missing[*]}) and not root to install them"
    log "installing build deps: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi

# apt-get download into a dir; when the package is not found (the system's apt
# lists may be empty), apt-get update once and retry.
apt_download() {  # <dir> <package=version>
    (cd "$1" && apt-get -o APT::Sandbox::User=root download "$2" >&2) && return 0
    [[ $(id -u) == 0 ]] || return 1
    log "apt-get download $2 failed; running apt-get update and retrying"
    apt-get update >&2 || return 1
    (cd "$1" && apt-get -o APT::Sandbox::User=root download "$2" >&2)
}

# --- source package -------------------------------------------------------------
# A private apt configuration with deb-src entries (bookworm's suites, or sid),
# so the system's sources and package lists are not touched.
src_dir="$downloads/src"
dsc="$src_dir/qemu_${src_version#*:}.dsc"
mkdir -p "$src_dir"
if [[ ! -f "$dsc" || ! -f "$src_dir/qemu_${src_upstream}.orig.tar.xz" ]]; then
    if [[ $src_suite == bookworm ]]; then
        apt_dir="$downloads/apt"
    else
        apt_dir="$downloads/apt-$src_suite"
    fi
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    if [[ $src_suite == bookworm ]]; then
        cat >"$apt_dir/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
    else
        echo "deb-src http://deb.debian.org/debian $src_suite main" >"$apt_dir/sources.list"
    fi
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o "APT::Sandbox::User=root")
    log "fetching qemu $src_version source"
    apt-get "${apt_opts[@]}" update >&2
    (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only "qemu=$src_version" >&2) \
        || die "apt-get source qemu=$src_version failed (version gone from the mirror? \
put qemu_${src_version#*:}.dsc, .debian.tar.xz and .orig.tar.xz into $src_dir)"
fi

# --- firmware (qemu-system-data, seabios) --------------------------------------
data_deb_dir="$downloads/data"
mkdir -p "$data_deb_dir"
data_deb="$(ls "$data_deb_dir"/qemu-system-data_*_all.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$data_deb" ]]; then
    log "fetching qemu-system-data $data_version"
    apt_download "$data_deb_dir" "qemu-system-data=$data_version" \
        || die "apt-get download qemu-system-data=$data_version failed"
    data_deb="$(ls "$data_deb_dir"/qemu-system-data_*_all.deb | head -n1)"
fi
seabios_deb=""
if [[ -n "$seabios_version" ]]; then
    seabios_deb="$data_deb_dir/seabios_${seabios_version}_all.deb"
    if [[ ! -f "$seabios_deb" ]]; then
        log "fetching seabios $seabios_version"
        apt_download "$data_deb_dir" "seabios=$seabios_version" \
            || die "apt-get download seabios=$seabios_version failed"
    fi
fi

# --- meson (10.2: pip into a venv of the system python) ------------------------
python_opt=()
if [[ -n "$meson_version" ]]; then
    venv="$downloads/meson-$meson_version-venv"
    if [[ "$("$venv/bin/meson" --version 2>/dev/null || true)" != "$meson_version" ]]; then
        log "creating $venv (pip install meson==$meson_version)"
        rm -rf "$venv"
        py=/usr/bin/python3
        [[ -x $py ]] || py="$(command -v python3)"
        "$py" -m venv "$venv" >&2 || die "python3 -m venv failed (python3-venv missing?)"
        "$venv/bin/pip" install --disable-pip-version-check --quiet "meson==$meson_version" >&2 \
            || die "pip install meson==$meson_version failed"
    fi
    python_opt=(--python="$venv/bin/python3")
fi

# --- unpack, patch, configure, build -------------------------------------------
stage="$dest.tmp"
work="$dest.build"
rm -rf "$stage" "$work"
mkdir -p "$work" "$stage/bin" "$stage/share"
start=$(date +%s)

log "unpacking source"
dpkg-source --no-check -x "$dsc" "$work/qemu" >/dev/null
log "applying $(basename "$patch_file")"
patch -d "$work/qemu" -p1 --forward --batch <"$patch_file" >&2

log "configuring"
mkdir -p "$work/qemu/build"
# --without-default-features turns every auto feature off (docs, tools, guest agent, UIs,
# audio back ends, slirp, capstone, crypto libraries, io_uring, ssh, rbd, gluster, seccomp,
# vhost, ...); the explicit --disable-* document the ones that matter for build time.
# --disable-install-blobs as in debian/rules (the +ds tarball lacks the blobs; firmware comes
# from the .debs below).
configure_opts=(
    --prefix=/usr/local
    --ninja=/usr/bin/ninja
    --target-list=x86_64-softmmu
    --without-default-features
    --enable-tcg --enable-kvm --enable-fdt=system
    --disable-user --disable-linux-user --disable-bsd-user
    --disable-docs --disable-tools --disable-guest-agent
    --disable-sdl --disable-gtk --disable-vnc --disable-curses --disable-opengl
    --disable-spice --audio-drv-list=
    --disable-slirp --disable-capstone
    --disable-gnutls --disable-nettle --disable-gcrypt
    --disable-linux-io-uring --disable-libssh --disable-rbd --disable-glusterfs
    --disable-seccomp --disable-debug-info --disable-werror --disable-install-blobs
)
if [[ -n "$meson_version" ]]; then
    # 10.2: configure makes its pyvenv from --python (the venv with meson); --meson is gone.
    configure_opts+=("${python_opt[@]}")
else
    # 7.2: system python and meson (configure's --python needs QEMU's embedded meson, which
    # the dfsg source lacks).
    configure_opts+=(--meson=/usr/bin/meson)
fi
(
    cd "$work/qemu/build"
    PATH="/usr/bin:$PATH" ../configure "${configure_opts[@]}"
) >"$work/configure.log" 2>&1 || { tail -n 40 "$work/configure.log" >&2; die "configure failed"; }

log "building with -j$jobs (log: $work/build.log)"
nice -n 10 ninja -C "$work/qemu/build" -j "$jobs" qemu-system-x86_64 >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; die "build failed"; }

install -m 0755 "$work/qemu/build/qemu-system-x86_64" "$stage/bin/qemu-system-x86_64"
strip "$stage/bin/qemu-system-x86_64" 2>/dev/null || true

log "extracting firmware from $(basename "$data_deb")"
dpkg-deb -x "$data_deb" "$work/data"
cp -a "$work/data/usr/share/qemu" "$stage/share/qemu"
[[ -e "$stage/share/qemu/bios-microvm.bin" ]] || die "bios-microvm.bin missing from $data_deb"
if [[ -n "$seabios_deb" ]]; then
    # bios.bin, bios-256k.bin, vgabios-*.bin next to qemu-system-data's files
    # (which are kept where both have a name).
    log "extracting firmware from $(basename "$seabios_deb")"
    dpkg-deb -x "$seabios_deb" "$work/seabios"
    for f in "$work"/seabios/usr/share/seabios/*.bin; do
        [[ -e "$stage/share/qemu/$(basename "$f")" ]] || cp -L "$f" "$stage/share/qemu/"
    done
    [[ -e "$stage/share/qemu/bios-256k.bin" ]] || die "bios-256k.bin missing from $seabios_deb"
fi

end=$(date +%s)
{
    echo "key=$key"
    echo "qemu_version=$qemu_version"
    echo "source=qemu $src_version (Debian $src_suite) + $(basename "$patch_file")"
    echo "firmware=qemu-system-data $data_version${seabios_version:+, seabios $seabios_version} (Debian bookworm)"
    [[ -z "$meson_version" ]] || echo "meson=$meson_version (pip venv)"
    echo "patch_sha256=$(sha256sum "$patch_file" | cut -d' ' -f1)"
    echo "build_seconds=$((end - start))"
    echo "jobs=$jobs"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$stage/BUILD-INFO"
cp "$work/configure.log" "$work/build.log" "$stage/"
touch "$stage/.complete"

rm -rf "$dest"
mv "$stage" "$dest"
rm -rf "$work"
log "built in $((end - start)) s: $dest"
print_result
