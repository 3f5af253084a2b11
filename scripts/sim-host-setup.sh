#!/bin/sh
# Host packages for the simulator's real guests (provision/sim/guests, see docs guests.md).
# Idempotent: installs only what is missing. Needs root and Debian/Ubuntu apt.
#   systemd-container  systemd-nspawn (boots each guest)
#   lxcfs              /proc inside guests shows the VM's shape
#   debootstrap        builds the Debian 12 guest template once (cached in ~/.cache/labctl)
#   debian-archive-keyring  lets debootstrap verify bookworm on non-Debian hosts
#   openssh-client     ssh-keygen for per-guest host keys, ssh for tests
#   iproute2 util-linux  ip netns/veth/bridge, nsenter, mount
#   zstd               template tarballs
set -eu

PACKAGES="systemd-container lxcfs debootstrap debian-archive-keyring openssh-client iproute2 util-linux zstd"

if [ "$(id -u)" -ne 0 ]; then
    echo "sim-host-setup: run as root (the guests need netns, overlayfs and cgroups)" >&2
    exit 1
fi

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    echo "sim-host-setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing
else
    echo "sim-host-setup: all packages present ($PACKAGES)"
fi

# Each guest's systemd, journald and dbus hold several inotify instances. The kernel's default of
# 128 per user (all guests run as root on the host) lets only ~20 guests boot; the next one's
# systemd dies with "Failed to create control group inotify object: Too many open files".
# Raise the limits (only ever upward) for labs of 40+ guests, now and at every boot.
raise_sysctl() {
    current=$(sysctl -n "$1" 2>/dev/null || echo 0)
    if [ "$current" -lt "$2" ]; then
        if sysctl -q -w "$1=$2" >/dev/null 2>&1; then
            echo "$1 = $2" >> /etc/sysctl.d/60-labctl-sim.conf
        else
            echo "WARNING: cannot raise $1 to $2 (now $current); fewer guests can run at once" >&2
        fi
    fi
}
raise_sysctl fs.inotify.max_user_instances 1024
raise_sysctl fs.inotify.max_user_watches 524288

# What the backend checks at start, reported here too so a CI log says it up front.
grep -qw overlay /proc/filesystems || echo "sim-host-setup: WARNING: kernel has no overlayfs" >&2
for h in cpu cpuacct cpuset memory pids systemd; do
    [ -e "/sys/fs/cgroup/$h/cgroup.procs" ] || {
        echo "sim-host-setup: WARNING: cgroup v1 hierarchy '$h' not mounted; guests unavailable" >&2
    }
done
