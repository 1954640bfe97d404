#!/bin/busybox sh
# /init of the L2 boot-test initramfs: proves that Linux reached user space, then ends the VM.
# Prints `L2-INIT-MARKER nproc=<online CPUs>`.
# Kernel command line knobs: rig.l2_exit=poweroff (default) | reboot | halt;
# rig.flood=<n>: before exiting, flood the console (tests/tests/linux_console.rs): one writer pinned to
#   each CPU prints `FLOOD c=<cpu> n=<i> <filler>` for i in 0..n-1 while a busy loop per CPU loads
#   the machine and a printk writer sends n/10 `FLOOD-KMSG n=<i>` messages at KERN_ERR through
#   /dev/kmsg (the kernel's console path, which masks IER); then `FLOOD-DONE cpus=<c> lines=<n>`.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin
exec 0</dev/console 1>/dev/console 2>&1

nproc=$(grep -c '^processor' /proc/cpuinfo)
echo "L2-INIT-MARKER nproc=$nproc online=$(cat /sys/devices/system/cpu/online) uptime=$(cut -d' ' -f1 /proc/uptime)"

exit_mode=poweroff
flood=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rig.l2_exit=*) exit_mode="${arg#rig.l2_exit=}" ;;
        rig.flood=*) flood="${arg#rig.flood=}" ;;
    esac
done

if [ "$flood" -gt 0 ] 2>/dev/null; then
    hogs=""
    writers=""
    c=0
    while [ $c -lt "$nproc" ]; do
        taskset -c $c sh -c 'while :; do :; done' &
        hogs="$hogs $!"
        taskset -c $c sh -c "i=0; while [ \$i -lt $flood ]; do echo \"FLOOD c=$c n=\$i 0123456789abcdefghijklmnopqrstuvwxyz\"; i=\$((i + 1)); done" &
        writers="$writers $!"
        c=$((c + 1))
    done
    (
        i=0
        while [ $i -lt $((flood / 10)) ]; do
            echo "<3>FLOOD-KMSG n=$i" >/dev/kmsg
            i=$((i + 1))
        done
    ) &
    writers="$writers $!"
    wait $writers
    kill $hogs 2>/dev/null
    echo "FLOOD-DONE cpus=$nproc lines=$flood"
fi
case "$exit_mode" in
    reboot) reboot -f ;;
    halt) halt -f ;;
    *) poweroff -f ;;
esac
# poweroff -f returns only if the reboot syscall failed; try a reset.
sleep 1
reboot -f
