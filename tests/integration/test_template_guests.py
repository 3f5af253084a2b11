"""`labctl template create` end to end on the simulator's container guests: the image from a
local mirror, one boot without a guest agent, SSH trusted on first use, the template_prep role
installing the real Debian qemu-guest-agent package offline, power-off, template; then a clone of
it comes up through `labctl up`, whose agent now answers. Run under flock (guest tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.guest.known_hosts import pinned_hosts
from provision.pve.template import MARKER
from tests.support.image_mirror import ImageMirror
from tests.support.lab import Lab

# The guests are Debian 12 (bookworm) like this host; qemu-guest-agent's dependencies the
# simulator's template lacks come first (the role installs them in this order).
AGENT_PACKAGES = ("libnuma1", "liburing2", "libglib2.0-0", "qemu-guest-agent")
ADDRESS = "10.213.40.200"  # in guest_sim's subnet (tests/integration/conftest.py)


@pytest.fixture(scope="session")
def agent_debs() -> list[str]:
    """The real bookworm packages, fetched once with apt-get download and cached."""
    cache = Path.home() / ".cache" / "labctl" / "debs" / "qemu-guest-agent-bookworm"
    cache.mkdir(parents=True, exist_ok=True)
    debs = {name: sorted(cache.glob(f"{name}_*.deb")) for name in AGENT_PACKAGES}
    missing = [name for name, found in debs.items() if not found]
    if missing:
        result = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True,
                                text=True, timeout=300, check=False)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"apt-get download {' '.join(missing)} failed: {result.stderr.strip()}")
    return [str(max(cache.glob(f"{name}_*.deb"))) for name in AGENT_PACKAGES]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ImageMirror]:
    with ImageMirror(tmp_path / "mirror") as served:
        yield served


def test_template_create_builds_a_template_whose_clones_have_the_agent(
    guest_lab: Lab, mirror: ImageMirror, agent_debs: list[str]
) -> None:
    guest_lab.write(
        template={"image_base_url": mirror.url, "local_debs": agent_debs},
        timeouts={"agent": 60, "ssh": 90, "shutdown": 60, "task": 60},
    )
    address = ["--ip", f"{ADDRESS}/24", "--gateway", "10.213.40.1"]
    result = guest_lab.run("--json", "template", "create", "noble-tmpl", *address)
    assert result.code == 0, result
    built = result.json
    assert built["created"] is True
    assert built["host_key_fingerprint"].startswith("SHA256:")
    assert f"trusted noble-tmpl's SSH host key on first use: {built['host_key_fingerprint']}" in (
        result.stderr
    )
    assert ADDRESS in pinned_hosts(guest_lab.state / "known_hosts")
    vmid = built["vmid"]
    config = guest_lab.api("GET", f"/nodes/pve/qemu/{vmid}/config")
    assert config["template"] == 1
    assert config["agent"] == "enabled=1"
    assert config["cpu"] == "host"
    assert config["ide2"] == f"local-lvm:vm-{vmid}-cloudinit,media=cdrom"
    assert config["scsi0"].startswith(f"local-lvm:base-{vmid}-disk-0,")
    assert MARKER in config["description"]

    again = guest_lab.run("--json", "template", "create", "noble-tmpl", *address)
    assert again.code == 0, again
    assert (again.json["vmid"], again.json["created"]) == (vmid, False)

    # A clone of the new template: its agent reports the address (the role installed it).
    guest_lab.write(
        template={"name": "noble-tmpl", "image_base_url": mirror.url, "local_debs": agent_debs},
        timeouts={"agent": 60, "ssh": 90, "shutdown": 60, "task": 60},
    )
    up = guest_lab.run("up", "from-tmpl", "--cores", "1", "--ram", "512M", "--no-deploy")
    try:
        assert up.code == 0, up
    finally:
        guest_lab.empty()
        guest_lab.api("DELETE", f"/nodes/pve/qemu/{vmid}")


def test_a_role_that_fails_destroys_the_half_made_vm(
    guest_lab: Lab, mirror: ImageMirror, agent_debs: list[str]
) -> None:
    """kubuntu-desktop comes from the package mirror, which the simulator's guests do not have:
    the role fails after the VM has booted, and the VM is destroyed."""
    guest_lab.write(
        template={"image_base_url": mirror.url, "local_debs": agent_debs},
        timeouts={"agent": 60, "ssh": 90, "shutdown": 60, "task": 60},
    )
    result = guest_lab.run("template", "create", "kubuntu-tmpl", "--flavor", "kubuntu",
                           "--ip", f"{ADDRESS}/24")  # fmt: skip
    assert result.code == 6, result
    assert 'task "Install kubuntu-desktop from the package mirror." failed' in result.stderr
    assert "destroying vmid" in result.stderr
    every = guest_lab.api("GET", "/cluster/resources", params={"type": "vm"})
    assert "kubuntu-tmpl" not in [v.get("name") for v in every]
