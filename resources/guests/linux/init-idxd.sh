#!/bin/busybox sh
# /init of the L2 idxd guest: Debian's unmodified idxd driver and accel-config 3.5.3 drive the vDSA, then
# dmatest (built out of tree) copies through the dedicated WQ's dmaengine channel.
#
# Marker protocol (one line each, parsed by tests/tests/linux_idxd.rs):
#   IDXD-START nproc=<n> uptime=<s> movdir64b=yes|no dmatest=1|0 kernel=<uname -r>
#   IDXD-STEP <name> OK|FAIL|SKIP [detail]     one per step, in order (uptime= in the detail)
#   IDXD-OUT <step>: <line>                    output of a command of that step
#   IDXD-DMESG <line>                          the kernel log since the previous step (dmesg -c)
#   IDXD-LIST <line>                           `accel-config list` output (state after enable)
#   IDXD-DMATEST case=<c> threads=<t> buf=<b> iters=<i> polled=<p> norandom=<r> | <dmatest summary line>
#   IDXD-DMATEST-BYTES case=<c> passed=<n> bytes=<b>   tests of the case that passed, and the bytes they
#                                              copied (the sum of dmatest's per-test lengths, verbose=1)
#   IDXD-VERDICT PASS | IDXD-VERDICT FAIL steps=<failed steps>
# Steps: modules probe config enable-device enable-wq dma-channel list dmatest-load dmatest:<case>...
#        dmatest-unload
#        disable-wq disable-device reconfig reenable-device reenable-wq reenable-dma-channel dmatest:after-reenable
#        final-disable.
# Kernel command line knobs: rig.dmatest=1 (default) | 0 (skip dmatest: the CPU cannot execute
# MOVDIR64B); rig.dmatest_scale=<n> multiplies the iteration counts (default 1); rig.engines=<n> puts
# engines 0..n-1 in the WQ's group (default 1); rig.cases=standard (default: the cases below) |
# scaling (1 MiB copies, 128 in all, by 1, 2 and 4 threads: s1-1m s2-1m s4-1m; dmatest's
# noverify=1, so that the guest CPU's fill and compare of every buffer do not set the pace: the
# standard cases verify every byte).
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin:/usr/bin
exec 0</dev/console 1>/dev/console 2>&1

DMATEST=1
SCALE=1
ENGINES=1
CASES=standard
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rig.dmatest=*) DMATEST="${arg#rig.dmatest=}" ;;
        rig.dmatest_scale=*) SCALE="${arg#rig.dmatest_scale=}" ;;
        rig.engines=*) ENGINES="${arg#rig.engines=}" ;;
        rig.cases=*) CASES="${arg#rig.cases=}" ;;
    esac
done

FAILED=""
up() { cut -d' ' -f1 /proc/uptime; }
# Print (and clear) the kernel log gathered since the last call, tagged.
flush_dmesg() {
    dmesg -c 2>/dev/null | while IFS= read -r l; do echo "IDXD-DMESG $l"; done
}
ok() { flush_dmesg; echo "IDXD-STEP $1 OK uptime=$(up) ${2:-}"; }
fail() { flush_dmesg; echo "IDXD-STEP $1 FAIL uptime=$(up) ${2:-}"; FAILED="$FAILED $1"; }
skip() { flush_dmesg; echo "IDXD-STEP $1 SKIP ${2:-}"; }
# run_cmd STEP CMD...: run CMD, print its output tagged, OK when it exits 0.
run_cmd() {
    local step="$1" out rc
    shift
    out="$("$@" 2>&1)"
    rc=$?
    [ -n "$out" ] && echo "$out" | while IFS= read -r l; do echo "IDXD-OUT $step: $l"; done
    if [ "$rc" -eq 0 ]; then ok "$step" "($*)"; else fail "$step" "($* exited $rc)"; fi
    return $rc
}
attr() { cat "/sys/bus/dsa/devices/$1" 2>/dev/null; }
dma_channel() {
    for c in /sys/class/dma/dma*chan*; do
        [ -e "$c" ] && { echo "${c##*/}"; return 0; }
    done
    return 1
}
finish() {
    flush_dmesg
    if [ -z "$FAILED" ]; then echo "IDXD-VERDICT PASS"; else echo "IDXD-VERDICT FAIL steps=$FAILED"; fi
    poweroff -f
    sleep 1
    reboot -f
}

movdir=no
grep -q '^flags.* movdir64b' /proc/cpuinfo && movdir=yes
echo "IDXD-START nproc=$(grep -c '^processor' /proc/cpuinfo) uptime=$(up) movdir64b=$movdir dmatest=$DMATEST kernel=$(uname -r)"
flush_dmesg >/dev/null

# 1. Modules: idxd depends on idxd_bus (namespace IDXD); modules.dep is not shipped, so load in order.
if insmod /lib/modules/idxd_bus.ko && insmod /lib/modules/idxd.ko; then
    ok modules
else
    fail modules "(insmod failed; idxd refuses to load without MOVDIR64B: movdir64b=$movdir)"
    finish
fi

# 2. Probe: the PCI driver probes synchronously in insmod; dsa0 must exist and be disabled.
if [ -d /sys/bus/dsa/devices/dsa0 ]; then
    ok probe "state=$(attr dsa0/state) max_wqs=$(attr dsa0/max_work_queues) max_engines=$(attr dsa0/max_engines) max_groups=$(attr dsa0/max_groups) max_transfer_size=$(attr dsa0/max_transfer_size) version=$(attr dsa0/version) pasid_enabled=$(attr dsa0/pasid_enabled)"
else
    lspci_out="$(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device 2>/dev/null | tr '\n' ' ')"
    fail probe "(no /sys/bus/dsa/devices/dsa0; PCI ids: $lspci_out)"
    finish
fi

WQ=dsa0/wq0.0
# 3. Configuration (docs/dsa-device-model.md §12.2): one group, $ENGINES engine(s), one dedicated
#    kernel WQ, priority >= 1, driver name dmaengine, a non-empty name.
configure() {
    local e=0
    while [ $e -lt "$ENGINES" ]; do
        accel-config config-engine "dsa0/engine0.$e" --group-id=0 || return 1
        e=$((e + 1))
    done
    accel-config config-wq "$WQ" --group-id=0 --mode=dedicated --wq-size=16 --priority=10 \
        --type=kernel --name=dmaengine --driver-name=dmaengine --max-transfer-size=2097152
}
run_cmd config configure || finish
echo "IDXD-INFO group0.0 engines=$(attr group0.0/engines | tr ' ' ',')"
echo "IDXD-INFO wq0.0 mode=$(attr wq0.0/mode) type=$(attr wq0.0/type) name=$(attr wq0.0/name) driver_name=$(attr wq0.0/driver_name) size=$(attr wq0.0/size) priority=$(attr wq0.0/priority) group_id=$(attr wq0.0/group_id) max_transfer_size=$(attr wq0.0/max_transfer_size)"

enable_all() { # PREFIX
    run_cmd "${1}enable-device" accel-config enable-device dsa0 || return 1
    [ "$(attr dsa0/state)" = enabled ] || { fail "${1}enable-device" "(state=$(attr dsa0/state))"; return 1; }
    run_cmd "${1}enable-wq" accel-config enable-wq "$WQ" || return 1
    [ "$(attr wq0.0/state)" = enabled ] || { fail "${1}enable-wq" "(state=$(attr wq0.0/state))"; return 1; }
    local chstep=dma-channel
    [ -n "$1" ] && chstep="${1}enable-dma-channel"
    CHAN="$(dma_channel)"
    if [ -n "$CHAN" ]; then
        ok "$chstep" "channel=$CHAN $(ls /sys/class/dma | tr '\n' ' ')"
    else
        fail "$chstep" "(no dma*chan* in /sys/class/dma: $(ls /sys/class/dma 2>&1 | tr '\n' ' '))"
        return 1
    fi
}
enable_all "" || finish

# 4. accel-config list: the enabled device, group, engine and WQ.
list="$(accel-config list 2>&1)"
rc=$?
echo "$list" | while IFS= read -r l; do echo "IDXD-LIST $l"; done
if [ $rc -eq 0 ] && echo "$list" | grep -q 'wq0.0' ; then ok list; else fail list "(accel-config list exited $rc)"; fi

# 5. dmatest on the WQ's channel.
P=/sys/module/dmatest/parameters
# dmatest_case NAME THREADS BUF ITERS POLLED NORANDOM [NOVERIFY]
dmatest_case() {
    local name="$1" threads="$2" buf="$3" iters=$(($4 * SCALE)) polled="$5" norandom="$6" n sums i
    local noverify="${7:-0}"
    echo "$threads" >$P/threads_per_chan
    echo "$buf" >$P/test_buf_size
    echo "$iters" >$P/iterations
    echo "$polled" >$P/polled
    echo "$norandom" >$P/norandom
    echo "$noverify" >$P/noverify
    echo 1 >$P/max_channels
    echo 5000 >$P/timeout
    # One "test passed" line per test with its length (random sizes): the bytes the case moved.
    echo 1 >$P/verbose
    if ! echo "$CHAN" >$P/channel; then
        fail "dmatest:$name" "(dmatest refused channel $CHAN)"
        return 1
    fi
    local t0 t1
    t0="$(up)"
    rm -f /tmp/dmatest-end
    echo 1 >$P/run
    # `wait` blocks until every thread finished (its return time is the case's end); a watchdog
    # stops a hung test.
    ( cat $P/wait >/dev/null; up >/tmp/dmatest-end ) &
    local waiter=$! s=0
    while kill -0 $waiter 2>/dev/null; do
        sleep 1
        s=$((s + 1))
        if [ $s -ge 300 ]; then
            echo 0 >$P/run
            kill $waiter 2>/dev/null
            fail "dmatest:$name" "(still running after 300 s; stopped)"
            return 1
        fi
    done
    local log
    log="$(dmesg -c 2>/dev/null)"
    # The per-test "test passed" lines are summed, not echoed (hundreds per case on the console).
    echo "$log" | grep -v "'test passed'" | while IFS= read -r l; do echo "IDXD-DMESG $l"; done
    echo "$log" | grep "'test passed'" | sed -n 's/.* len=0x\([0-9a-fA-F]*\) .*/\1/p' | {
        np=0 nb=0
        while read -r h; do np=$((np + 1)); nb=$((nb + 0x$h)); done
        echo "IDXD-DMATEST-BYTES case=$name passed=$np bytes=$nb"
    }
    sums="$(echo "$log" | grep ': summary ')"
    n=0
    echo "$sums" | grep -q . && n=$(echo "$sums" | wc -l)
    echo "$sums" | while IFS= read -r l; do
        [ -n "$l" ] && echo "IDXD-DMATEST case=$name threads=$threads buf=$buf iters=$iters polled=$polled norandom=$norandom noverify=$noverify | $l"
    done
    # Every thread must report `N tests, 0 failures` with N = iters.
    local bad
    bad="$(echo "$sums" | grep -v " summary $iters tests, 0 failures ")"
    t1="$(cat /tmp/dmatest-end 2>/dev/null)"
    if [ "$n" -eq "$threads" ] && [ -z "$bad" ]; then
        ok "dmatest:$name" "threads=$n elapsed_from=$t0 ended=${t1:-?}"
    else
        fail "dmatest:$name" "(summaries=$n of $threads; mismatching: $bad)"
    fi
}

# dmatest keeps its channel after a run (the WQ then has a client and disable-wq is refused); reading
# `run` drops finished channels, unloading the module releases everything.
release_dmatest() {
    cat $P/run >/dev/null 2>&1
    if rmmod dmatest; then ok dmatest-unload; else fail dmatest-unload "(rmmod dmatest failed)"; fi
}

if [ "$DMATEST" = 1 ]; then
    if insmod /lib/modules/dmatest.ko; then
        ok dmatest-load
        if [ "$CASES" = scaling ]; then
            dmatest_case s1-1m 1 1048576 128 0 1 1
            dmatest_case s2-1m 2 1048576 64 0 1 1
            dmatest_case s4-1m 4 1048576 32 0 1 1
        else
            dmatest_case t1-4k 1 4096 200 0 0
            dmatest_case t2-64k 2 65536 50 0 0
            dmatest_case t4-16k 4 16384 50 0 0
            dmatest_case t1-2m-max 1 2097152 8 0 1
            dmatest_case t2-2m-max 2 2097152 4 0 1
            dmatest_case polled 1 16384 100 1 0
        fi
        grep -i idxd /proc/interrupts | while IFS= read -r l; do echo "IDXD-INFO irq $l"; done
        release_dmatest
    else
        fail dmatest-load
    fi
else
    skip dmatest "dmatest disabled by rig.dmatest=0 (the CPU cannot execute MOVDIR64B): data path NOT exercised"
fi

# 6. Teardown and re-enable: disable-wq (DRAIN_WQ, RESET_WQ), disable-device (DISABLE_DEVICE,
#    RESET_DEVICE), then enable both again and use the channel once more.
if run_cmd disable-wq accel-config disable-wq "$WQ"; then
    [ "$(attr wq0.0/state)" = disabled ] || fail disable-wq "(wq0.0 state=$(attr wq0.0/state))"
    [ -z "$(dma_channel)" ] || fail disable-wq "(channel still in /sys/class/dma after disable-wq)"
fi
if run_cmd disable-device accel-config disable-device dsa0; then
    [ "$(attr dsa0/state)" = disabled ] || fail disable-device "(dsa0 state=$(attr dsa0/state))"
fi
# With a configurable device, disable-device makes the driver clear its WQ, group and engine
# configuration (idxd_device_clear_state), as on hardware: enable-device would fail with 0x800d0000
# "no wqs configured". Configure again first.
echo "IDXD-INFO after disable-device: wq0.0 size=$(attr wq0.0/size) type=$(attr wq0.0/type) engine0.0 group_id=$(attr engine0.0/group_id)"
run_cmd reconfig configure
if enable_all "re"; then
    if [ "$DMATEST" = 1 ] && insmod /lib/modules/dmatest.ko; then
        dmatest_case after-reenable 1 4096 50 0 0
        release_dmatest
    fi
    run_cmd final-disable sh -c "accel-config disable-wq $WQ && accel-config disable-device dsa0"
fi
finish
