#!/usr/bin/env python3
"""Minimal KVM loader that boots the self-test guest through the Linux 64-bit
boot protocol, as dsavmm does: long mode with an identity map of 4 GiB,
RSI = boot_params at 0x7000 (e820, cmdline, initrd, acpi_rsdp_addr), ACPI
tables (RSDP at 0xe0000, XSDT, MADT, FADT HW-reduced with SLEEP_CONTROL_REG at
port 0x600, DSDT with _S5_, MCFG), a 16550 transmit-only console on 0x3f8 and
the exit port 0xf4. In-kernel irqchip; APs wait for INIT/SIPI.

A development aid for the guest only (dsavmm is the real VMM).

Usage: kvm-linux64.py ELF [--mem MIB] [--vcpus N] [--cmdline S] [--initrd F]
Exit status: the byte the guest wrote to port 0xf4 (125 on a VMM error).
"""
import argparse
import ctypes
import mmap
import os
import struct
import sys
import threading
import time

T0 = time.monotonic()
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int


def _ioc(d, nr, size):
    return (d << 30) | (size << 16) | (0xAE << 8) | nr


KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_GET_SUPPORTED_CPUID = _ioc(3, 0x05, 8)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(1, 0x46, 32)
KVM_SET_TSS_ADDR = _ioc(0, 0x47, 0)
KVM_CREATE_IRQCHIP = _ioc(0, 0x60, 0)
KVM_RUN = _ioc(0, 0x80, 0)
KVM_SET_REGS = _ioc(1, 0x82, 144)
KVM_GET_SREGS = _ioc(2, 0x83, 312)
KVM_SET_SREGS = _ioc(1, 0x84, 312)
KVM_SET_CPUID2 = _ioc(1, 0x90, 8)
KVM_GET_LAPIC = _ioc(2, 0x8E, 1024)
KVM_SET_LAPIC = _ioc(1, 0x8F, 1024)


EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_SHUTDOWN, EXIT_INTERNAL = 2, 5, 6, 8, 17


def ioctl(fd, req, arg=0):
    while True:
        r = libc.ioctl(fd, req, arg)
        if r >= 0:
            return r
        e = ctypes.get_errno()
        # EINTR; EAGAIN: KVM_RUN of a vCPU that left the INIT/SIPI wait state
        if e not in (4, 11):
            raise OSError(e, "ioctl %#x: %s" % (req, os.strerror(e)))


def fail(msg):
    sys.stderr.write("kvm-linux64: %s\n" % msg)
    os._exit(125)


class Mem:
    def __init__(self, vm, mem_bytes):
        self.low = min(mem_bytes, 3 << 30)
        self.high = mem_bytes - self.low
        self.regions = []  # (gpa, size, mmap, host address)
        self._add(vm, 0, 0, self.low)
        if self.high:
            self._add(vm, 1, 4 << 30, self.high)

    def _add(self, vm, slot, gpa, size):
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000))
        host = ctypes.addressof(ctypes.c_char.from_buffer(m))
        region = struct.pack("<IIQQQ", slot, 0, gpa, size, host)
        buf = ctypes.create_string_buffer(region)
        ioctl(vm, KVM_SET_USER_MEMORY_REGION, ctypes.addressof(buf))
        self.regions.append((gpa, size, m))

    def write(self, gpa, data):
        for base, size, m in self.regions:
            if base <= gpa and gpa + len(data) <= base + size:
                m[gpa - base:gpa - base + len(data)] = data
                return
        fail("write outside RAM at %#x" % gpa)


def checksum_fix(table, off=9):
    t = bytearray(table)
    t[off] = 0
    t[off] = (-sum(t)) & 0xFF
    return bytes(t)


def sdt(sig, body, rev=1):
    hdr = struct.pack("<4sIBB6s8sI4sI", sig, 36 + len(body), rev, 0, b"DSAVMM", b"SELFTEST", 1, b"PYKV", 1)
    return checksum_fix(hdr + body)


def gas(space, width, addr):
    return struct.pack("<BBBBQ", space, width, 0, 1, addr)


def acpi_tables(base, vcpus):
    """Returns the bytes to place at `base` (RSDP first) and the RSDP address."""
    off = {}
    blobs = []
    cur = base + 64

    def place(name, data):
        nonlocal cur
        off[name] = cur
        blobs.append((cur, data))
        cur += (len(data) + 15) & ~15

    aml = b"\x08_S5_\x12\x07\x04\x0a\x05\x00\x00\x00"
    place("DSDT", sdt(b"DSDT", aml, 2))
    madt = struct.pack("<II", 0xFEE00000, 0)
    for i in range(vcpus):
        madt += struct.pack("<BBBBI", 0, 8, i, i, 1)
    madt += struct.pack("<BBBBII", 1, 12, vcpus, 0, 0xFEC00000, 0)
    place("APIC", sdt(b"APIC", madt, 5))
    fadt = bytearray(276 - 36)
    struct.pack_into("<I", fadt, 40 - 36, off["DSDT"])
    struct.pack_into("<I", fadt, 112 - 36, 1 << 20)  # HW_REDUCED_ACPI
    fadt[131 - 36] = 3  # minor version
    struct.pack_into("<Q", fadt, 140 - 36, off["DSDT"])
    fadt[244 - 36:256 - 36] = gas(1, 8, 0x600)
    fadt[256 - 36:268 - 36] = gas(1, 8, 0x601)
    place("FACP", sdt(b"FACP", bytes(fadt), 6))
    mcfg = bytes(8) + struct.pack("<QHBBI", 0xE0000000, 0, 0, 0, 0)
    place("MCFG", sdt(b"MCFG", mcfg, 1))
    xsdt = b"".join(struct.pack("<Q", off[n]) for n in ("APIC", "FACP", "MCFG"))
    place("XSDT", sdt(b"XSDT", xsdt, 1))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, b"DSAVMM", 2, 0, 36, off["XSDT"], 0, b"\0\0\0"))
    rsdp[8] = (-sum(rsdp[:20])) & 0xFF
    rsdp[32] = (-sum(rsdp)) & 0xFF
    blobs.insert(0, (base, bytes(rsdp)))
    return blobs, base


def load_elf(mem, path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        fail("%s: not an ELF64 file" % path)
    entry, phoff = struct.unpack_from("<QQ", data, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz, _ = struct.unpack_from("<IIQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            mem.write(p_paddr, data[p_offset:p_offset + p_filesz])
    return entry


def segment(sel, code):
    # kvm_segment: base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, padding
    return struct.pack("<QIHBBBBBBBBBB", 0, 0xFFFFFFFF, sel, 0xB if code else 0x3, 1, 0, 0 if code else 1, 1,
                       1 if code else 0, 1, 0, 0, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("elf")
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--cmdline", default=None)
    ap.add_argument("--initrd", default=None)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    mem_bytes = a.mem << 20

    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = ioctl(kvm, KVM_CREATE_VM, 0)
    ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000)
    ioctl(vm, KVM_CREATE_IRQCHIP, 0)
    mem = Mem(vm, mem_bytes)
    entry = load_elf(mem, a.elf)

    # Page tables at 0x9000 (PML4), 0xa000 (PDPT), 0xb000.. (4 PDs): 0..4 GiB.
    mem.write(0x9000, struct.pack("<Q", 0xA000 | 3))
    mem.write(0xA000, b"".join(struct.pack("<Q", (0xB000 + i * 0x1000) | 3) for i in range(4)))
    mem.write(0xB000, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(2048)))
    # GDT at 0x500: null, null, code64 (0x10), data (0x18).
    mem.write(0x500, struct.pack("<QQQQ", 0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))

    blobs, rsdp = acpi_tables(0xE0000, a.vcpus)
    for addr, blob in blobs:
        mem.write(addr, blob)

    cmdline = a.cmdline
    if cmdline is None:
        cmdline = "console=ttyS0 selftest.mem_mib=%d selftest.vcpus=%d" % (a.mem, a.vcpus)
    initrd = open(a.initrd, "rb").read() if a.initrd else b""
    if initrd:
        h = 0xCBF29CE484222325
        for b in initrd:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        cmdline += " selftest.initrd_fnv=%016x" % h
    mem.write(0x20000, cmdline.encode() + b"\0")

    bp = bytearray(4096)
    struct.pack_into("<Q", bp, 0x070, rsdp)
    struct.pack_into("<H", bp, 0x1FE, 0xAA55)
    struct.pack_into("<I", bp, 0x202, 0x53726448)  # "HdrS"
    struct.pack_into("<H", bp, 0x206, 0x020F)
    bp[0x210] = 0xFF  # type_of_loader
    struct.pack_into("<I", bp, 0x228, 0x20000)
    struct.pack_into("<I", bp, 0x238, 2048)
    if initrd:
        low_end = mem.low
        addr = (low_end - len(initrd)) & ~0xFFF
        mem.write(addr, initrd)
        struct.pack_into("<II", bp, 0x218, addr, len(initrd))
    e820 = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2), (0x100000, mem.low - 0x100000, 1)]
    if mem.high:
        e820.append((4 << 30, mem.high, 1))
    bp[0x1E8] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", bp, 0x2D0 + 20 * i, addr, size, kind)
    mem.write(0x7000, bytes(bp))

    # CPUID: what KVM supports, with per-vCPU APIC IDs.
    nent = 256
    buf = ctypes.create_string_buffer(8 + 40 * nent)
    struct.pack_into("<I", buf, 0, nent)
    ioctl(kvm, KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buf))
    nent = struct.unpack_from("<I", buf, 0)[0]
    entries = [list(struct.unpack_from("<IIIIIIIIII", buf, 8 + 40 * i)) for i in range(nent)]
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)

    out_lock = threading.Lock()
    first = [None]

    def vcpu_thread(fd, run, index):
        while True:
            try:
                ioctl(fd, KVM_RUN, 0)
            except OSError as e:
                fail("vCPU %d: KVM_RUN: %s" % (index, e))
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason == EXIT_IO:
                direction, size, port, count, data_off = struct.unpack_from("<BBHIQ", run, 32)
                for k in range(count):
                    o = data_off + k * size
                    if direction == 1:  # out
                        v = run[o]
                        if port == 0x3F8:
                            with out_lock:
                                if first[0] is None:
                                    first[0] = time.monotonic()
                                sys.stdout.buffer.write(bytes([v]))
                                if v == 10:
                                    sys.stdout.buffer.flush()
                        elif port == 0xF4:
                            sys.stdout.buffer.flush()
                            t = time.monotonic()
                            sys.stderr.write("kvm-linux64: exit %d; first serial byte after %.1f ms, exit after %.1f ms\n"
                                             % (v, ((first[0] or t) - T0) * 1000, (t - T0) * 1000))
                            os._exit(v)
                        elif port in (0x600, 0x64):
                            sys.stdout.buffer.flush()
                            sys.stderr.write("kvm-linux64: power off/reset via port %#x\n" % port)
                            os._exit(126)
                    else:
                        run[o:o + size] = {0x3FD: b"\x60", 0x3FA: b"\xc1"}.get(port, b"\xff" * size)[:size].ljust(size, b"\xff")
            elif reason == EXIT_MMIO:
                phys, = struct.unpack_from("<Q", run, 32)
                is_write = run[52]
                if not is_write:
                    run[40:48] = b"\xff" * 8
            elif reason == EXIT_HLT:
                fail("vCPU %d: HLT exit" % index)
            elif reason == EXIT_SHUTDOWN:
                fail("vCPU %d: triple fault (shutdown)" % index)
            elif reason == EXIT_INTERNAL:
                sub = struct.unpack_from("<I", run, 32)[0]
                ndata = struct.unpack_from("<I", run, 36)[0]
                data = struct.unpack_from("<%dQ" % min(ndata, 8), run, 40)
                fail("vCPU %d: internal error %d %s" % (index, sub, " ".join("%#x" % d for d in data)))
            else:
                fail("vCPU %d: unexpected exit %d" % (index, reason))

    threads = []
    for i in range(a.vcpus):
        fd = ioctl(vm, KVM_CREATE_VCPU, i)
        cpuid = bytearray(8 + 40 * nent)
        struct.pack_into("<I", cpuid, 0, nent)
        for j, e in enumerate(entries):
            e = list(e)
            if e[0] == 1:
                e[4] = (e[4] & 0x00FFFFFF) | (i << 24)
            if e[0] in (0xB, 0x1F):
                e[7] = i
            struct.pack_into("<IIIIIIIIII", cpuid, 8 + 40 * j, *e)
        cbuf = ctypes.create_string_buffer(bytes(cpuid))
        ioctl(fd, KVM_SET_CPUID2, ctypes.addressof(cbuf))
        run = mmap.mmap(fd, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if i == 0:
            sregs = ctypes.create_string_buffer(312)
            ioctl(fd, KVM_GET_SREGS, ctypes.addressof(sregs))
            s = bytearray(sregs.raw)
            s[0:24] = segment(0x10, True)
            for k in (1, 2, 3, 4, 5):  # ds es fs gs ss
                s[24 * k:24 * k + 24] = segment(0x18, False)
            struct.pack_into("<QH", s, 192, 0x500, 31)  # gdt
            struct.pack_into("<QQQQQQ", s, 224, 0x80000033, 0, 0x9000, 0x20, 0, 0x500)  # cr0 cr2 cr3 cr4 cr8 efer
            sbuf = ctypes.create_string_buffer(bytes(s))
            ioctl(fd, KVM_SET_SREGS, ctypes.addressof(sbuf))
            regs = [0] * 18
            regs[4] = 0x7000  # rsi
            regs[6] = 0x8FF0  # rsp
            regs[16] = entry  # rip
            regs[17] = 2  # rflags
            rbuf = ctypes.create_string_buffer(struct.pack("<18Q", *regs))
            ioctl(fd, KVM_SET_REGS, ctypes.addressof(rbuf))
        # Like Firecracker's set_lint: LVT0 = ExtINT, LVT1 = NMI, written with
        # KVM_SET_LAPIC. On this machine's KVM (PVM) an AP whose LAPIC state was
        # never set does not wake up on INIT/SIPI (it stays in KVM_RUN).
        lap = ctypes.create_string_buffer(1024)
        ioctl(fd, KVM_GET_LAPIC, ctypes.addressof(lap))
        struct.pack_into("<I", lap, 0x350, 0x700)
        struct.pack_into("<I", lap, 0x360, 0x400)
        ioctl(fd, KVM_SET_LAPIC, ctypes.addressof(lap))
        t = threading.Thread(target=vcpu_thread, args=(fd, run, i), daemon=True)
        threads.append(t)
    for t in reversed(threads):
        t.start()
    time.sleep(a.timeout)
    fail("timeout after %.0f s" % a.timeout)


if __name__ == "__main__":
    main()
