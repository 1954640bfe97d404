# shellcheck shell=bash
# apt_download: `apt-get download` that copes with a fresh machine. Sourced by lib.sh; qemu/build.sh keeps
# its own copy, as its text is part of the QEMU cache key.
#
# A fresh machine's apt lists are empty, so apt knows no package at all ("Unable to locate package").
# Then, as root, `apt-get update` runs once per build and the download is retried; not as root, the build
# stops with one line naming the command to run. Any other failure (network, a version gone from the
# mirror after the update) is returned to the caller with apt's output on stderr.
# Needs `log` from the sourcing script.

# apt_download DIR SPEC: download SPEC (name or name=version) into DIR.
apt_download() {
    local dir="$1" spec="$2" out
    if out="$(cd "$dir" && apt-get -o APT::Sandbox::User=root download "$spec" 2>&1)"; then
        return 0
    fi
    # The marker is per top-level script ($$ is the same in its subshells, and its start time tells
    # a reused PID apart): one update per build. Only an unknown package means empty lists; a
    # pinned version gone from full lists ("Version ... was not found") goes back to the caller,
    # which falls back to the candidate.
    local marker
    marker="${TMPDIR:-/tmp}/dsavmm-apt-updated.$$.$(stat -c %Y "/proc/$$" 2>/dev/null || echo 0)"
    if ! grep -q "Unable to locate package" <<<"$out" || [[ -f "$marker" ]]; then
        echo "$out" >&2
        return 1
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "apt does not know ${spec%%=*} (empty apt lists?): run 'sudo apt-get update' first" >&2
        exit 1
    fi
    log "apt-get download $spec: package not found (empty apt lists?); running apt-get update and retrying"
    if ! apt-get -q update >&2; then
        log "apt-get update failed"
        return 1
    fi
    touch "$marker"
    out="$(cd "$dir" && apt-get -o APT::Sandbox::User=root download "$spec" 2>&1)" && return 0
    echo "$out" >&2
    return 1
}
