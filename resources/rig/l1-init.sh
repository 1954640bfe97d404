#!/bin/busybox sh
# /init of the rig's L1 (the emulated AMD host): load KVM, run each command of /rig/runs, power off.
#
# Console protocol (parsed by tests/src, one marker per line):
#   RIG-L1-INIT uptime=<s>                 user space reached
#   RIG-MODULE-FAIL <module>               insmod failed (followed by L1-KMSG: lines)
#   RIG-KVM-MISSING                        modules loaded but no /dev/kvm
#   RIG-L1-CPU movdir64b=yes|no            whether L1's CPU (QEMU's TCG) executes MOVDIR64B (cpuinfo flag)
#   RIG-L1-READY uptime=<s>                /dev/kvm is there
#   RIG-DSAVMM-START <i> uptime=<s>        run <i> starts; its stdout (the L2 console) follows untagged
#   RIG-E: <line>                          a line the command wrote to stderr (dsavmm's log)
#   RIG-DSAVMM-EXIT=<code> i=<i> uptime=<s>
#   L1-KMSG: <line>                        L1 kernel log lines (printed after module load and each run)
#   RIG-L1-DONE                            all runs finished; L1 powers off
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin:/usr/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
exec 0</dev/console 1>/dev/console 2>&1

up() { cut -d' ' -f1 /proc/uptime; }
kmsg() { dmesg -c | sed 's/^/L1-KMSG: /'; }
finish() {
    echo "RIG-L1-DONE"
    poweroff -f
    sleep 2
    reboot -f
}

echo "RIG-L1-INIT uptime=$(up)"
for m in irqbypass ccp kvm kvm-amd; do
    if ! insmod "/lib/modules/rig/$m.ko"; then
        echo "RIG-MODULE-FAIL $m"
        kmsg
        finish
    fi
done
# With a vfio-user device (rig.sh --vfio-user): kernel VFIO, to own it. vfio-pci refuses Intel's
# accelerators (DSA, IAA, QAT) unless its denylist is off.
if [ -f /rig/vfio ]; then
    for m in vfio vfio_iommu_type1 vfio-pci-core vfio-pci; do
        p=""
        [ "$m" = vfio-pci ] && p="disable_denylist=1"
        if ! insmod "/lib/modules/rig/$m.ko" $p; then
            echo "RIG-MODULE-FAIL $m"
            kmsg
            finish
        fi
    done
fi
if [ ! -c /dev/kvm ]; then
    echo "RIG-KVM-MISSING"
    kmsg
    finish
fi
kmsg | grep -E 'kvm|SVM|svm' 
# Keep the kernel quiet on the console while the runs own it; its log is printed after each run.
dmesg -n 1
if grep -q '^flags.* movdir64b' /proc/cpuinfo; then movdir=yes; else movdir=no; fi
echo "RIG-L1-CPU movdir64b=$movdir"
echo "RIG-L1-READY uptime=$(up)"

exec 3>&1
# Copies standard input to standard output a whole line at a time, each prefixed with $1 (a last
# line without a newline is still copied).
relay() { while IFS= read -r l || [ -n "$l" ]; do printf '%s%s\n' "$1" "$l"; done; }
i=0
if [ -f /rig/runs ]; then
    while IFS= read -r line <&9; do
        [ -n "$line" ] || continue
        echo "RIG-DSAVMM-START $i uptime=$(up)"
        # Both streams go to the console as whole lines (one write each), so dsavmm's log
        # (stderr, tagged) never lands in the middle of a guest console line (stdout) that
        # dsavmm is still writing byte by byte.
        { { eval "$line" </dev/null 2>&1 1>&4 4>&- 3>&-; echo $? >/tmp/rc; } \
            | relay "RIG-E: " 1>&3; } 4>&1 | relay ""
        rc=$(cat /tmp/rc)
        printf '\nRIG-DSAVMM-EXIT=%s i=%s uptime=%s\n' "$rc" "$i" "$(up)"
        kmsg
        i=$((i + 1))
    done 9</rig/runs
fi
finish
