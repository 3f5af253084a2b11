"""What `labctl template create` is asked for, checked before anything talks to Proxmox VE:
the image (a known name or a URL), its checksum from the image's SHA256SUMS, the flavor and the
first boot's static address. Pure functions, except `fetch_checksum` (one HTTP GET).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from provision.config import validate_vm_name
from provision.errors import ProxmoxError, UsageError

UBUNTU_2404 = "ubuntu-24.04"
UBUNTU_IMAGE_PATH = "noble/current/noble-server-cloudimg-amd64.img"
UBUNTU_OFFICIAL_BASE = "https://cloud-images.ubuntu.com"
FLAVORS = ("server", "kubuntu")
SUMS_FILE = "SHA256SUMS"
# pve-storage src/PVE/Storage.pm UPLOAD_IMPORT_EXT_RE_1: what download-url accepts for `import`
IMPORT_EXTENSIONS = (".qcow2", ".raw", ".vmdk")
SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
FETCH_TIMEOUT_S = 30


@dataclass(frozen=True)
class TemplateRequest:
    """One `template create`: every value checked."""

    name: str
    image_url: str
    flavor: str
    storage: str
    ip: str  # CIDR of the first boot's static address
    gateway: str

    @property
    def address(self) -> str:
        return self.ip.split("/", 1)[0]

    @property
    def ipconfig0(self) -> str:
        return f"ip={self.ip}" + (f",gw={self.gateway}" if self.gateway else "")

    @property
    def sums_url(self) -> str:
        """Ubuntu (and Debian) publish SHA256SUMS beside the images."""
        return self.image_url.rsplit("/", 1)[0] + "/" + SUMS_FILE

    @property
    def image_file(self) -> str:
        return self.image_url.rsplit("/", 1)[1]

    def import_filename(self, checksum: str) -> str:
        """The name on the storage: PVE's `import` content wants a format extension (Ubuntu's
        `.img` cloud images are qcow2), and the checksum in the name keeps each build of the
        image apart: download-url refuses a file of the same name with another checksum
        ("checksum mismatch ... aborting", pve-common Tools.pm download_file_from_url), and
        `current` on cloud-images.ubuntu.com changes with every rebuild."""
        stem, dot, ext = self.image_file.rpartition(".")
        if not (dot and f".{ext}" in IMPORT_EXTENSIONS):
            stem, ext = stem or self.image_file, "qcow2"
        return f"{stem}-{checksum[:12]}.{ext}"


def image_url(image: str, base_url: str = "") -> str:
    """`ubuntu-24.04` -> the noble cloud image (on base_url when a mirror is set); a URL as is."""
    if image == UBUNTU_2404:
        return f"{(base_url or UBUNTU_OFFICIAL_BASE).rstrip('/')}/{UBUNTU_IMAGE_PATH}"
    parts = urllib.parse.urlsplit(image)
    if parts.scheme in ("http", "https") and parts.netloc and parts.path.rstrip("/"):
        return image
    raise UsageError(f"--image must be {UBUNTU_2404} or an http(s) URL of a cloud image: {image!r}")


def check_address(ip: str | None, gateway: str | None) -> tuple[str, str]:
    """The first boot's static CIDR and gateway; the address is required (no agent yet)."""
    if gateway and not ip:
        raise UsageError("--gateway needs --ip")
    if not ip:
        raise UsageError(
            "--ip CIDR is required: a cloud image has no guest agent to report a DHCP address"
        )
    if "/" not in ip:
        raise UsageError(f"--ip {ip} needs a prefix length, e.g. {ip}/24")
    try:
        interface = ipaddress.ip_interface(ip)
    except ValueError:
        raise UsageError(f"--ip {ip!r} is not an address with a prefix length") from None
    if gateway:
        try:
            ipaddress.ip_address(gateway)
        except ValueError:
            raise UsageError(f"--gateway {gateway!r} is not an IP address") from None
    return str(interface), gateway or ""


def check_arguments(
    name: str, image: str, *, flavor: str, ip: str | None, gateway: str | None
) -> None:
    """The command line alone checked (before any lab file is read): UsageError, exit 2."""
    if flavor not in FLAVORS:
        raise UsageError(f"--flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    validate_vm_name(name)
    check_address(ip, gateway)
    image_url(image)


def parse_request(
    name: str,
    image: str,
    *,
    flavor: str,
    storage: str,
    ip: str | None,
    gateway: str | None,
    image_base_url: str = "",
) -> TemplateRequest:
    """Every argument checked; a bad one is a UsageError (one line, exit 2)."""
    check_arguments(name, image, flavor=flavor, ip=ip, gateway=gateway)
    cidr, gw = check_address(ip, gateway)
    return TemplateRequest(
        name=name,
        image_url=image_url(image, image_base_url),
        flavor=flavor,
        storage=storage,
        ip=cidr,
        gateway=gw,
    )


def checksum_from_sums(text: str, filename: str) -> str:
    """The lower-case SHA-256 of `filename` in a SHA256SUMS file (`<hex> *name` or
    `<hex>  name`, as sha256sum writes them in binary and text mode)."""
    found: list[str] = []
    for line in text.splitlines():
        match = SUMS_LINE.match(line.strip())
        if match and match.group(2).lstrip("./") == filename:
            found.append(match.group(1).lower())
    if not found:
        raise ProxmoxError(f"{SUMS_FILE} lists no checksum for {filename}")
    if len(set(found)) > 1:
        raise ProxmoxError(f"{SUMS_FILE} lists different checksums for {filename}")
    return found[0]


def fetch_checksum(request: TemplateRequest) -> str:
    """GET the image's SHA256SUMS and pick its line (PVE then checks the download against it)."""
    try:
        with urllib.request.urlopen(request.sums_url, timeout=FETCH_TIMEOUT_S) as response:
            text = response.read(1024 * 1024).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ProxmoxError(
            f"cannot read {request.sums_url}: {reason}",
            hint="the image's SHA256SUMS must sit beside it; labctl does not import unchecked",
        ) from None
    return checksum_from_sums(text, request.image_file)
