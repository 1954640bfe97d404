#!/bin/busybox sh
# /init of the L2 boot-test initramfs: proves that Linux reached user space, then ends the VM.
# Prints `L2-INIT-MARKER nproc=<online CPUs>`.
# Kernel command line knob: rig.l2_exit=poweroff (default) | reboot | halt.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin
exec 0</dev/console 1>/dev/console 2>&1

nproc=$(grep -c '^processor' /proc/cpuinfo)
echo "L2-INIT-MARKER nproc=$nproc online=$(cat /sys/devices/system/cpu/online) uptime=$(cut -d' ' -f1 /proc/uptime)"

exit_mode=poweroff
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rig.l2_exit=*) exit_mode="${arg#rig.l2_exit=}" ;;
    esac
done
case "$exit_mode" in
    reboot) reboot -f ;;
    halt) halt -f ;;
    *) poweroff -f ;;
esac
# poweroff -f returns only if the reboot syscall failed; try a reset.
sleep 1
reboot -f
