#!/bin/busybox sh
# /init of the L2 DPDK guest: Debian's unmodified DPDK 22.11 drives the vDSA from user space. The
# device is handed to DPDK through uio_pci_generic (Debian's kernel has no VFIO no-IOMMU mode and the
# kernel's user WQ character device needs SVA, which a vDSA without PASID cannot offer); DPDK's idxd
# PCI PMD then configures the device itself through BAR0 (groups, engines, dedicated WQs), maps the
# portal page from BAR2 and submits descriptors with MOVDIR64B from user space, at IOVA = guest
# physical address (--iova-mode=pa over hugepages).
#
# Marker protocol (one line each, parsed by tests/tests/linux_dpdk.rs):
#   DPDK-START nproc=<n> uptime=<s> movdir64b=yes|no kernel=<uname -r>
#   DPDK-STEP <name> OK|FAIL|SKIP [detail]      one per step, in order (uptime= in the detail)
#   DPDK-OUT <step>: <line>                     output of the step's command (dpdk-test's progress
#                                               lines, `\r`-separated, shortened to the last of each run;
#                                               its stderr under step dmadev_autotest-log)
#   DPDK-DMESG <line>                           the kernel log since the previous step (dmesg -c)
#   DPDK-VERDICT PASS | DPDK-VERDICT FAIL steps=<failed steps>
#   (dpdk-copy-bench's own lines, under step copy-bench: PERF size=<b> ops=<n> bytes=<total> dma_ns=<t>
#    memcpy_ns=<t> dma_mbps=<x> memcpy_mbps=<y> ratio=<dma/memcpy> verified=<n>, then PERF-DONE dev=<name>)
# Steps: modules device bind hugepages dmadev_autotest copy-bench.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin:/usr/bin
# The rootfs root is world-writable (tmpfs, 1777), and DPDK refuses to load a driver (-d) below a
# world-writable directory.
/bin/busybox chmod 0755 /
exec 0</dev/console 1>/dev/console 2>&1

FAILED=""
up() { cut -d' ' -f1 /proc/uptime; }
flush_dmesg() {
    dmesg -c 2>/dev/null | while IFS= read -r l; do echo "DPDK-DMESG $l"; done
}
ok() { flush_dmesg; echo "DPDK-STEP $1 OK uptime=$(up) ${2:-}"; }
fail() { flush_dmesg; echo "DPDK-STEP $1 FAIL uptime=$(up) ${2:-}"; FAILED="$FAILED $1"; }
finish() {
    flush_dmesg
    if [ -z "$FAILED" ]; then echo "DPDK-VERDICT PASS"; else echo "DPDK-VERDICT FAIL steps=$FAILED"; fi
    poweroff -f
    sleep 1
    reboot -f
}
# tagged STEP FILE: print FILE's lines as `DPDK-OUT STEP: ...`; of each run of `\r`-separated progress
# lines (`Ops submitted: ...`) only the last one.
tagged() {
    tr '\r' '\n' <"$2" | awk -v step="$1" '
        /^Ops submitted/ { last = $0; next }
        { if (last != "") { print "DPDK-OUT " step ": " last; last = "" } print "DPDK-OUT " step ": " $0 }
        END { if (last != "") print "DPDK-OUT " step ": " last }'
}

movdir=no
grep -q '^flags.* movdir64b' /proc/cpuinfo && movdir=yes
echo "DPDK-START nproc=$(grep -c '^processor' /proc/cpuinfo) uptime=$(up) movdir64b=$movdir kernel=$(uname -r)"
flush_dmesg >/dev/null

# 1. uio and uio_pci_generic (modules.dep is not shipped: load in order). idxd is not loaded.
if insmod /lib/modules/uio.ko && insmod /lib/modules/uio_pci_generic.ko; then
    ok modules
else
    fail modules "(insmod failed)"
    finish
fi

# 2. The vDSA: the PCI function 8086:0b25.
BDF=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x8086 ] && [ "$(cat "$d/device")" = 0x0b25 ]; then
        BDF="${d##*/}"
        break
    fi
done
if [ -n "$BDF" ]; then
    ok device "bdf=$BDF resources=$(wc -l <"/sys/bus/pci/devices/$BDF/resource")"
else
    fail device "(no 8086:0b25 among $(ls /sys/bus/pci/devices | tr '\n' ' '))"
    finish
fi

# 3. Bind it to uio_pci_generic (new_id binds every unbound function with that ID).
echo "8086 0b25" >/sys/bus/pci/drivers/uio_pci_generic/new_id
drv="$(readlink "/sys/bus/pci/devices/$BDF/driver")"
if [ "${drv##*/}" = uio_pci_generic ] && [ -d "/sys/bus/pci/devices/$BDF/uio" ]; then
    ok bind "driver=uio_pci_generic uio=$(ls "/sys/bus/pci/devices/$BDF/uio")"
else
    fail bind "(driver=${drv:-none})"
    finish
fi

# 4. 2 MiB hugepages: DPDK's memory, whose guest physical addresses the descriptors carry.
#    dpdk-copy-bench's 32 buffers of 1 MiB, each aligned to its size, take a 2 MiB page each.
mkdir -p /dev/hugepages
mount -t hugetlbfs nodev /dev/hugepages
echo 80 >/proc/sys/vm/nr_hugepages
pages="$(cat /proc/sys/vm/nr_hugepages)"
if [ "$pages" -ge 72 ]; then ok hugepages "pages=$pages"; else fail hugepages "(nr_hugepages=$pages)"; finish; fi

LIB=/lib/x86_64-linux-gnu
EAL="-l 0 --in-memory --no-telemetry --iova-mode=pa -a $BDF,max_queues=1 -d $LIB/librte_dma_idxd.so.23 -d $LIB/librte_dma_skeleton.so.23"

# 5. DPDK's own dmadev unit test (app/test/test_dmadev.c): the dmadev API on the skeleton driver, then
#    on the vDSA's queue: 640 rounds of single and burst copies with every byte checked, burst
#    capacity, fills. (The error-handling cases need IOVA-as-VA, so DPDK skips them in PA mode.)
t0="$(up)"
# Its stdout (the test's own lines) and stderr (EAL's and the drivers' log) apart, so that a log
# line never splits a run of progress lines; a hang ends after 300 s with what was printed.
# shellcheck disable=SC2086
DPDK_TEST=dmadev_autotest timeout 300 dpdk-test $EAL >/tmp/dmadev.log 2>/tmp/dmadev.err
rc=$?
t1="$(up)"
tagged dmadev_autotest /tmp/dmadev.log
tagged dmadev_autotest-log /tmp/dmadev.err
if [ "$rc" -eq 0 ] && grep -q '^Test OK' /tmp/dmadev.log; then
    ok dmadev_autotest "elapsed_from=$t0 elapsed_to=$t1"
else
    fail dmadev_autotest "(dpdk-test exited $rc; 143 = killed after 300 s)"
fi

# 6. Throughput: dpdk-copy-bench (dpdk-copy-bench.c) times BURST-copy rounds through the same queue
#    and through memcpy, side by side, each copy checked; one `PERF size=...` line per size.
# shellcheck disable=SC2086
timeout 300 dpdk-copy-bench -l 0 --in-memory --no-telemetry --iova-mode=pa -a $BDF,max_queues=1 \
    -d $LIB/librte_dma_idxd.so.23 >/tmp/bench.log 2>&1
rc=$?
tagged copy-bench /tmp/bench.log
if [ "$rc" -eq 0 ] && grep -q '^PERF-DONE' /tmp/bench.log; then
    ok copy-bench
else
    fail copy-bench "(dpdk-copy-bench exited $rc; 143 = killed after 300 s)"
fi
finish
