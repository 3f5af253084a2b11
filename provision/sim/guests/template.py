"""The guest template: a Debian 12 root filesystem built once with debootstrap and cached.

Every simulated VM boots an overlay clone (or a copy) of this directory. It is prepared like a
cloud image before first boot (guests.md 2a): no SSH host keys, empty machine-id, an /etc/hosts,
no DNS resolver, no periodic apt jobs. The cache is keyed by the package list and the preparation
version, so changing either builds a new template; a lock file keeps two processes from building
the same one at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from provision.sim.guests.errors import GuestBackendError, GuestsUnavailable
from provision.sim.guests.hostcmd import run

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# What the guests need without a mirror: sshd + systemd (the VM), python3 + python3-apt (Ansible's
# setup and apt modules), sudo + acl (become, also to an unprivileged user), zstd/xz/tar/gzip/curl
# (unarchiving a release tarball, get_url), procps/iproute2 (probe and admin tools).
TEMPLATE_PACKAGES: tuple[str, ...] = (
    "openssh-server",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "sudo",
    "acl",
    "python3",
    "python3-apt",
    "zstd",
    "xz-utils",
    "curl",
    "ca-certificates",
    "procps",
    "tar",
    "gzip",
    "less",
)

# Bump when _prepare() changes, so cached templates are rebuilt.
PREP_VERSION = 1

# Periodic jobs that only make noise (or reach for the network) in a test guest.
_MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
)

_STAMP = "template.json"

Log = Callable[[str], None]


def template_key(packages: tuple[str, ...] = TEMPLATE_PACKAGES) -> str:
    """Cache key: suite + sorted package list + preparation version."""
    blob = json.dumps({"suite": SUITE, "packages": sorted(packages), "prep": PREP_VERSION})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "sim-template"


def host_mirror(sources_files: tuple[Path, ...] | None = None) -> str:
    """The Debian mirror apt on this host uses for the main archive (not -security)."""
    if sources_files is None:
        extra = sorted(Path("/etc/apt/sources.list.d").glob("*"))
        sources_files = (Path("/etc/apt/sources.list"), *extra)
    for path in sources_files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in _debian_uris(text):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _debian_uris(text: str) -> Iterator[str]:
    # one-line format: deb [opts] URI SUITE COMPONENTS
    for line in text.splitlines():
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) == SUITE and _is_debian_archive(m.group(1)):
            yield m.group(1)
    # deb822 format: stanzas with URIs: / Suites:
    for stanza in re.split(r"\n\s*\n", text):
        fields = {
            k.strip().lower(): v.strip()
            for k, v in (ln.split(":", 1) for ln in stanza.splitlines() if re.match(r"\w+:", ln))
        }
        if SUITE in fields.get("suites", "").split():
            for uri in fields.get("uris", "").split():
                if _is_debian_archive(uri):
                    yield uri


def _is_debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and uri.rstrip("/").endswith("/debian")


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_template(cache_dir: Path, packages: tuple[str, ...] = TEMPLATE_PACKAGES) -> Path | None:
    """The ready template rootfs if it is already cached, else None."""
    entry = cache_dir / template_key(packages)
    if (entry / _STAMP).is_file() and (entry / "rootfs" / "usr/sbin/sshd").exists():
        return entry / "rootfs"
    return None


def ensure_template(
    cache_dir: Path,
    *,
    packages: tuple[str, ...] = TEMPLATE_PACKAGES,
    mirror: str | None = None,
    log: Log = lambda _msg: None,
) -> Path:
    """Return the template rootfs directory, building it first if it is not cached."""
    found = cached_template(cache_dir, packages)
    if found:
        return found
    if shutil.which("debootstrap") is None:
        raise GuestsUnavailable(
            "the guest template is not cached and debootstrap is missing "
            "(run scripts/sim-host-setup.sh)"
        )
    with _locked(cache_dir / ".build.lock"):
        found = cached_template(cache_dir, packages)  # another process may have built it
        if found:
            return found
        return _build(cache_dir, packages, mirror or host_mirror(), log)


def _build(cache_dir: Path, packages: tuple[str, ...], mirror: str, log: Log) -> Path:
    key = template_key(packages)
    work = cache_dir / f".build-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    log(f"building the guest template (debootstrap {SUITE} from {mirror}, about a minute)")
    started = time.monotonic()
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            timeout=1800,
        )
        _prepare(rootfs)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    stamp = {
        "key": key,
        "suite": SUITE,
        "packages": sorted(packages),
        "prep_version": PREP_VERSION,
        "mirror": mirror,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    final = cache_dir / key
    if final.exists():  # a stale, unstamped leftover
        shutil.rmtree(final)
    os.rename(work, final)
    log(f"guest template ready in {seconds:.0f} s: {final / 'rootfs'}")
    return final / "rootfs"


def _prepare(rootfs: Path) -> None:
    """Make the fresh rootfs look like a cloud image that has never booted."""
    if not (rootfs / "usr/sbin/sshd").exists():
        raise GuestBackendError("debootstrap finished but the rootfs has no sshd")
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every clone gets its own host keys on first boot
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (rootfs / "etc/hostname").write_text("template\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n")
    # No DNS: a copied host nameserver makes every lookup (Ansible fact gathering) time out.
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# no DNS in simulator guests\n")
    (rootfs / "etc/ssh/sshd_config.d/50-labctl-sim.conf").write_text(
        "# like a cloud image after cloud-init: keys only\nPasswordAuthentication no\nUseDNS no\n"
    )
    system = rootfs / "etc/systemd/system"
    for unit in _MASKED_UNITS:
        for wants in system.glob(f"*.wants/{unit}"):
            wants.unlink()
        target = system / unit
        target.unlink(missing_ok=True)
        target.symlink_to("/dev/null")
    run(["chroot", str(rootfs), "apt-get", "clean"], timeout=120)
