#!/usr/bin/env bash
# Build the nested test rig's QEMU: Debian bookworm's qemu 7.2 source with
# resources/qemu/movdir64b.patch (MOVDIR64B/MOVDIRI in TCG), x86_64-softmmu only,
# every optional feature off.
#
# Output (stdout, exactly two lines; all progress goes to stderr):
#   <cache>/bin/qemu-system-x86_64
#   <cache>/share/qemu            (firmware dir for -L: bios-microvm.bin, pvh.bin, ...)
# When the cache dir is already complete it prints those lines and exits at once.
#
# Cache dir: $DSAVMM_QEMU_CACHE if set, else
#   ${DSAVMM_CACHE:-<repo>/target/cache}/qemu-<key>
# where <key> = first 16 hex digits of sha256(movdir64b.patch, build.sh, source version).
# Downloads (source package, qemu-system-data .deb, a private apt list dir) are kept in
#   ${DSAVMM_CACHE:-<repo>/target/cache}/qemu-downloads
# and reused.  Set DSAVMM_QEMU_JOBS to change the build parallelism (default 2).
#
# Needs: root (or the build deps already installed) and network for the first build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
patch_file="$here/movdir64b.patch"

# Debian bookworm source and firmware versions (the rig's qemu-system-x86 is
# 1:7.2+dfsg-7+deb12u18+b3, a binNMU of this source).
src_version="1:7.2+dfsg-7+deb12u18"
src_upstream="7.2+dfsg"
data_version="1:7.2+dfsg-7+deb12u18"
jobs="${DSAVMM_QEMU_JOBS:-2}"

log() { echo "qemu/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

cache_root="${DSAVMM_CACHE:-$repo/target/cache}"
key="$( { cat "$patch_file" "$here/build.sh"; echo "$src_version $data_version"; } \
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

# --- source package -------------------------------------------------------------
# A private apt configuration with deb-src entries for the bookworm suites, so
# the system's sources and package lists are not touched.
src_dir="$downloads/src"
dsc="$src_dir/qemu_${src_version#*:}.dsc"
mkdir -p "$src_dir"
if [[ ! -f "$dsc" || ! -f "$src_dir/qemu_${src_upstream}.orig.tar.xz" ]]; then
    apt_dir="$downloads/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    cat >"$apt_dir/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o "APT::Sandbox::User=root")
    log "fetching qemu $src_version source"
    apt-get "${apt_opts[@]}" update >&2
    (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only "qemu=$src_version" >&2) \
        || die "apt-get source qemu=$src_version failed (version gone from the mirror? \
put qemu_${src_version#*:}.dsc, .debian.tar.xz and .orig.tar.xz into $src_dir)"
fi

# --- firmware (qemu-system-data) -----------------------------------------------
data_deb_dir="$downloads/data"
mkdir -p "$data_deb_dir"
data_deb="$(ls "$data_deb_dir"/qemu-system-data_*_all.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$data_deb" ]]; then
    log "fetching qemu-system-data $data_version"
    (cd "$data_deb_dir" && apt-get -o APT::Sandbox::User=root download \
        "qemu-system-data=$data_version" >&2) \
        || die "apt-get download qemu-system-data=$data_version failed"
    data_deb="$(ls "$data_deb_dir"/qemu-system-data_*_all.deb | head -n1)"
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
(
    cd "$work/qemu/build"
    # --without-default-features turns every auto feature off (docs, tools,
    # guest agent, UIs, audio back ends, slirp, capstone, crypto libraries,
    # io_uring, ssh, rbd, gluster, seccomp, vhost, ...); the explicit
    # --disable-* below document the ones that matter for build time.
    # System python and meson (configure's --python needs QEMU's embedded
    # meson, which the dfsg source lacks).
    PATH="/usr/bin:$PATH" ../configure \
        --prefix=/usr/local \
        --meson=/usr/bin/meson --ninja=/usr/bin/ninja \
        --target-list=x86_64-softmmu \
        --without-default-features \
        --enable-tcg --enable-kvm --enable-fdt=system \
        --disable-user --disable-linux-user --disable-bsd-user \
        --disable-docs --disable-tools --disable-guest-agent \
        --disable-sdl --disable-gtk --disable-vnc --disable-curses --disable-opengl \
        --disable-spice --audio-drv-list= \
        --disable-slirp --disable-capstone \
        --disable-gnutls --disable-nettle --disable-gcrypt \
        --disable-linux-io-uring --disable-libssh --disable-rbd --disable-glusterfs \
        --disable-seccomp --disable-debug-info --disable-werror --disable-install-blobs
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

end=$(date +%s)
{
    echo "key=$key"
    echo "source=qemu $src_version (Debian bookworm) + $(basename "$patch_file")"
    echo "firmware=qemu-system-data $data_version"
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
