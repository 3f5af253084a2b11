"""Guest networking: one bridge per backend, one network namespace + veth pair per guest.

The host holds the subnet's first address on the bridge; guests get the others. Guests get no
default route and ip_forward is left alone, so a guest reaches only the bridge (the host's address,
where a test mirror may listen) and the other guests on it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

from provision.sim.guests.errors import GuestBackendError, HostCapacityError
from provision.sim.guests.hostcmd import quiet, run

IFNAMSIZ = 15  # longest Linux interface name


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def ensure_bridge(name: str, host_cidr: str) -> bool:
    """Create the bridge (if missing) with host_cidr on it; True if this call created it."""
    created = False
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
        created = True
    addr = run(["ip", "-j", "addr", "show", "dev", name]).stdout
    have = {f"{a['local']}/{a['prefixlen']}" for i in json.loads(addr) for a in i["addr_info"]}
    if host_cidr not in have:
        run(["ip", "addr", "add", host_cidr, "dev", name])
    run(["ip", "link", "set", name, "up"])
    return created


def delete_link(name: str) -> None:
    if link_exists(name):
        quiet(["ip", "link", "del", name])


def plug_guest(netns: str, host_if: str, bridge: str, mac: str, cidr: str) -> None:
    """Create netns + veth (eth0 inside with mac and cidr, host_if on the bridge)."""
    unplug_guest(netns, host_if)
    run(["ip", "netns", "add", netns])
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", host_if, "master", bridge, "up"])
        run(["ip", "-n", netns, "link", "set", "eth0", "address", mac])
        run(["ip", "-n", netns, "addr", "add", cidr, "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
    except GuestBackendError:
        unplug_guest(netns, host_if)
        raise
    # A destroyed guest's address may come back with a new MAC; the host's stale neighbour
    # entry would black-hole traffic until it expires (~30 s). A real VM's boot announces
    # itself with gratuitous ARP; flushing the entry has the same effect here.
    quiet(["ip", "neigh", "flush", "to", cidr.split("/")[0], "dev", bridge])


def unplug_guest(netns: str, host_if: str) -> None:
    if netns_exists(netns):
        quiet(["ip", "netns", "del", netns])
    delete_link(host_if)  # normally gone with the netns (its peer lived there)


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def list_links(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))


def guest_interfaces(netns: str) -> list[dict[str, Any]]:
    """QGA guest-network-get-interfaces shape, read from the guest's namespace."""
    links = json.loads(run(["ip", "-n", netns, "-j", "-s", "addr", "show"]).stdout)
    result = []
    for link in links:
        addrs = [
            {
                "ip-address-type": "ipv6" if a["family"] == "inet6" else "ipv4",
                "ip-address": a["local"],
                "prefix": a["prefixlen"],
            }
            for a in link.get("addr_info", [])
            if a.get("family") in ("inet", "inet6")
        ]
        stats = link.get("stats64", {})
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        result.append(
            {
                "name": link["ifname"],
                "hardware-address": link.get("address", "00:00:00:00:00:00"),
                "ip-addresses": addrs,
                "statistics": {
                    "rx-bytes": rx.get("bytes", 0),
                    "rx-packets": rx.get("packets", 0),
                    "rx-errs": rx.get("errors", 0),
                    "rx-dropped": rx.get("dropped", 0),
                    "tx-bytes": tx.get("bytes", 0),
                    "tx-packets": tx.get("packets", 0),
                    "tx-errs": tx.get("errors", 0),
                    "tx-dropped": tx.get("dropped", 0),
                },
            }
        )
    return result


def static_ip(ipconfig0: str | None) -> str | None:
    """The address of `ip=a.b.c.d/nn` in a PVE ipconfig string (None for dhcp or absent)."""
    if not ipconfig0:
        return None
    m = re.search(r"(?:^|,)ip=([0-9.]+)(?:/\d+)?(?:,|$)", ipconfig0)
    return m.group(1) if m else None


class Leases:
    """Guest addresses in the backend's subnet: static when asked for, else leased like DHCP.

    Leases are kept per VMID in a JSON file so a VM keeps its address across restarts of the
    simulator, as a DHCP server with a lease database would give it.
    """

    def __init__(self, subnet: str, path: Path) -> None:
        self.network = ipaddress.IPv4Network(subnet, strict=True)
        if self.network.num_addresses < 4:
            raise ValueError(f"subnet {subnet} is too small for a host and guests")
        self.host_ip = next(self.network.hosts())
        self.path = path
        self._leases: dict[int, str] = {}
        if path.exists():
            raw = json.loads(path.read_text())
            self._leases = {int(k): v for k, v in raw.items()}

    @property
    def host_cidr(self) -> str:
        return f"{self.host_ip}/{self.network.prefixlen}"

    def cidr(self, ip: str) -> str:
        return f"{ip}/{self.network.prefixlen}"

    def assign(self, vmid: int, ipconfig0: str | None, in_use: dict[int, str]) -> str:
        """Pick the address for vmid; in_use = addresses of the guests running now."""
        taken = {ip for v, ip in in_use.items() if v != vmid}
        wanted = static_ip(ipconfig0)
        if wanted and self._usable(wanted):
            if wanted in taken:
                raise GuestBackendError(f"address {wanted} is already used by a running guest")
            return wanted
        leased = self._leases.get(vmid)
        if leased and self._usable(leased) and leased not in taken:
            return leased
        others = taken | {ip for v, ip in self._leases.items() if v != vmid}
        for host in self.network.hosts():
            ip = str(host)
            if host != self.host_ip and ip not in others:
                self._leases[vmid] = ip
                self._save()
                return ip
        raise HostCapacityError(
            f"cannot start VM {vmid}: no free address left in {self.network} (its "
            f"{self.network.num_addresses - 3} guest addresses are used by running guests or "
            "leased to other VMs; destroy VMs you no longer need, or give the simulator a larger "
            "--subnet)"
        )

    def release(self, vmid: int) -> None:
        if self._leases.pop(vmid, None) is not None:
            self._save()

    def _usable(self, ip: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        return (
            addr in self.network
            and addr != self.host_ip
            and addr not in (self.network.network_address, self.network.broadcast_address)
        )

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(self._leases.items())}))
        os.replace(tmp, self.path)
