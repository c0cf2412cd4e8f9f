#!/usr/bin/env python3
"""Checks an LMAS appliance config (gateway.datapath = "dpdk") against this host.

Run by `scripts/dpdk-setup.sh check --config FILE`. Prints one line per finding
("ok:", "warning:", "error:") and exits 1 if there is an error. Reads only /proc and
/sys; changes nothing.
"""

import os
import re
import sys
import tomllib

findings = {"error": 0, "warning": 0}


def say(level, msg):
    if level in findings:
        findings[level] += 1
    print(f"{level}: {msg}")


def cpu_list(text):
    """'0-2,5' -> {0, 1, 2, 5}."""
    cpus = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def arg_value(args, names):
    """The value of an EAL option given as `--opt=V`, `--opt V` or `-o V`."""
    for i, a in enumerate(args):
        for n in names:
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
            if a == n and i + 1 < len(args):
                return args[i + 1]
    return None


def lcore_map(args, roles, ncpus):
    """lcore id -> CPU, as the EAL (and lmas's default --lcores) will set it up."""
    spec = arg_value(args, ["--lcores"])
    if spec is None:
        plain = arg_value(args, ["-l"])
        if plain is not None:
            return {l: l for l in cpu_list(plain)}
        if arg_value(args, ["-c"]) is not None:
            say("warning", "-c (hex core mask) is not interpreted by this check; use -l or --lcores")
            return None
        # lmas adds --lcores=L@(L % CPUs) for the main lcore 0 and every role lcore.
        return {l: l % ncpus for l in [0] + roles}
    mapping = {}
    for item in re.findall(r"\([^)]*\)@\([^)]*\)|\([^)]*\)@\d+|\d+(?:-\d+)?@\([^)]*\)|\d+(?:-\d+)?@\d+|\d+(?:-\d+)?", spec):
        lc, _, cpu = item.partition("@")
        lcs = cpu_list(lc.strip("()"))
        cpus = sorted(cpu_list(cpu.strip("()"))) if cpu else None
        for l in lcs:
            mapping[l] = cpus[0] if cpus else l
    return mapping


def cpu_node(cpu):
    for entry in os.listdir(f"/sys/devices/system/cpu/cpu{cpu}") if os.path.isdir(f"/sys/devices/system/cpu/cpu{cpu}") else []:
        if entry.startswith("node") and entry[4:].isdigit():
            return int(entry[4:])
    return None


PCI = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
DPDK_DRIVERS = {"vfio-pci", "igb_uio", "uio_pci_generic"}


def main(path):
    try:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        say("error", f"{path}: {e}")
        return 1
    if conf.get("gateway", {}).get("datapath") != "dpdk":
        say("error", f'{path}: gateway.datapath is not "dpdk": nothing to check')
        return 1
    d = conf.get("dpdk", {})
    args = [str(a) for a in d.get("eal_args", [])]
    io = d.get("io_lcores", [1])
    tcp = d.get("tcp_lcores", [d.get("tcp_lcore", 2)])
    crypto = d.get("crypto_lcores", [3])
    roles = [("io", l) for l in io] + [("tcp", l) for l in tcp] + [("crypto", l) for l in crypto]
    online = cpu_list(read("/sys/devices/system/cpu/online", "0"))
    isolated = cpu_list(read("/sys/devices/system/cpu/isolated"))
    nohz = cpu_list(read("/sys/devices/system/cpu/nohz_full")) if read("/sys/devices/system/cpu/nohz_full") not in ("", "(null)") else set()
    mapping = lcore_map(args, [l for _, l in roles], len(online))

    # Lcores and CPUs.
    if mapping is not None:
        used = {}
        for role, l in roles:
            cpu = mapping.get(l)
            if cpu is None:
                say("error", f"{role} lcore {l} is not in the EAL's lcore list ({arg_value(args, ['--lcores', '-l'])})")
                continue
            if cpu not in online:
                say("error", f"{role} lcore {l} maps to CPU {cpu}, which is not online ({read('/sys/devices/system/cpu/online')})")
                continue
            used.setdefault(cpu, []).append(f"{role} lcore {l}")
            if cpu in isolated or cpu in nohz:
                say("ok", f"{role} lcore {l} on CPU {cpu}, isolated")
            else:
                say("warning", f"{role} lcore {l} on CPU {cpu}, which is not isolated: add it to isolcpus= and nohz_full= on the kernel command line so nothing else runs there")
        for cpu, who in used.items():
            if len(who) > 1 and d.get("idle_sleep_us", 0) == 0:
                say("warning", f"CPU {cpu} runs {', '.join(who)}, all busy polling: they slow each other down (give each its own CPU, or set idle_sleep_us for a test box)")
            elif len(who) > 1:
                say("ok", f"CPU {cpu} is shared by {', '.join(who)}, which sleep when idle (idle_sleep_us): a test setup, not an appliance")
        main_cpu = mapping.get(0)
        if main_cpu is not None and main_cpu in used:
            say("warning", f"the main lcore (admin, signals) shares CPU {main_cpu} with {', '.join(used[main_cpu])}")

    # Ports.
    vdevs = {a.split("=", 1)[1].split(",")[0] for a in args if a.startswith("--vdev=")}
    for side in ("lan", "wan"):
        dev = str(d.get(side, {}).get("device", ""))
        if not dev:
            say("error", f"dpdk.{side}.device is missing")
        elif PCI.match(dev):
            sysdev = f"/sys/bus/pci/devices/{dev}"
            if not os.path.exists(sysdev):
                say("error", f"dpdk.{side}.device {dev}: no such PCI device")
                continue
            drv = os.path.basename(os.readlink(f"{sysdev}/driver")) if os.path.exists(f"{sysdev}/driver") else None
            if drv in DPDK_DRIVERS:
                say("ok", f"dpdk.{side}.device {dev} is bound to {drv}")
            else:
                say("error", f"dpdk.{side}.device {dev} is bound to {drv or 'no driver'}, not a DPDK driver: scripts/dpdk-setup.sh bind {dev}")
            node = read(f"{sysdev}/numa_node", "-1")
            if node not in ("", "-1") and mapping is not None:
                for role, l in roles:
                    cpu = mapping.get(l)
                    if role in ("io", "tcp") and cpu is not None and cpu_node(cpu) not in (None, int(node)):
                        say("warning", f"{role} lcore {l} (CPU {cpu}, node {cpu_node(cpu)}) is not on {dev}'s NUMA node {node}: packets cross the socket interconnect")
        elif dev in vdevs:
            say("ok", f"dpdk.{side}.device {dev} is a virtual device from eal_args (--vdev)")
        else:
            say("error", f"dpdk.{side}.device {dev} is neither a PCI address nor a --vdev in dpdk.eal_args")

    # Memory.
    if "--no-huge" in args:
        say("warning", "--no-huge: packet buffers in ordinary pages (fine for tests and af_packet, slow with a real NIC)")
    else:
        total = 0
        for base in ("/sys/kernel/mm/hugepages/hugepages-2048kB", "/sys/kernel/mm/hugepages/hugepages-1048576kB"):
            n = int(read(f"{base}/nr_hugepages", "0") or 0)
            total += n * (2 if "2048" in base else 1024)
        if total == 0:
            say("error", "no hugepages reserved: scripts/dpdk-setup.sh hugepages --pages 1024")
        else:
            say("ok", f"{total} MiB of hugepages reserved")
    print(f"{findings['error']} error(s), {findings['warning']} warning(s)")
    return 1 if findings["error"] else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: dpdk_check.py CONFIG", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
