#!/usr/bin/env bash
# Schema-based fuzzing of a running dsavmm API with schemathesis (PyPI), bounded in count
# and time, on the local machine only.
#
#   api/schemathesis.sh SOCKET_PATH
#
# SOCKET_PATH is the --api-sock of a running `dsavmm --api-sock ...` (or of
# `cargo run -p api --example fake_vmm -- SOCKET_PATH`). schemathesis speaks TCP only, so a
# small bridge listens on 127.0.0.1 (an ephemeral port, loopback only) and forwards each
# connection to the UNIX socket. The spec is the one the server serves (GET /openapi.json).
#
# Checks: no 5xx; status codes, content types, headers and bodies match the spec; invalid
# input is rejected; undocumented methods get 405 with a correct Allow header.
# Not checked: positive_data_acceptance (a valid body can still be refused: 400 for a
# kernel file that does not exist, 409 for the VM's state) and the stateful/auth checks.
#
# Environment:
#   DSAVMM_CACHE_DIR             cache root (default <repo>/target/cache); the venv goes
#                                in $DSAVMM_CACHE_DIR/schemathesis/venv
#   SCHEMATHESIS_MAX_EXAMPLES    test cases per operation (default 30)
#   SCHEMATHESIS_MAX_TIME        time budget in seconds for the run (default 120)
#   SCHEMATHESIS_SKIP_ACTIONS=1  leave out PUT /actions (its Shutdown ends a real dsavmm)
#   SCHEMATHESIS_SEED            seed for a reproducible run (default 1)
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 SOCKET_PATH" >&2
    exit 2
fi
SOCK=$1
if [ ! -S "$SOCK" ]; then
    echo "$0: $SOCK is not a socket (is dsavmm running with --api-sock $SOCK?)" >&2
    exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${DSAVMM_CACHE_DIR:-$REPO/target/cache}/schemathesis
VENV=$CACHE/venv
VERSION=4.32.5
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-30}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-120}
SEED=${SCHEMATHESIS_SEED:-1}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi

WORK=$(mktemp -d)
BRIDGE_PID=
cleanup() {
    if [ -n "$BRIDGE_PID" ]; then
        kill "$BRIDGE_PID" 2>/dev/null || true
        wait "$BRIDGE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# TCP (127.0.0.1 only) -> UNIX socket bridge; writes its port to $WORK/port.
"$VENV/bin/python" - "$SOCK" "$WORK/port" <<'PY' &
import asyncio, sys

sock_path, port_file = sys.argv[1], sys.argv[2]

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass

async def handle(tcp_reader, tcp_writer):
    try:
        unix_reader, unix_writer = await asyncio.open_unix_connection(sock_path)
    except OSError:
        tcp_writer.close()
        return
    await asyncio.gather(pipe(tcp_reader, unix_writer), pipe(unix_reader, tcp_writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
BRIDGE_PID=$!
for _ in $(seq 100); do
    [ -s "$WORK/port" ] && break
    sleep 0.05
done
PORT=$(cat "$WORK/port")
BASE=http://127.0.0.1:$PORT

EXTRA=()
if [ "${SCHEMATHESIS_SKIP_ACTIONS:-0}" = 1 ]; then
    EXTRA+=(--exclude-path /actions)
fi

"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
    --url "$BASE" \
    --phases examples,coverage,fuzzing \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 10 \
    --warnings off \
    "${EXTRA[@]}"
