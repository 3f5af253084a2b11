"""The plain-text renderings of `labctl ls` and `labctl resize`."""

from __future__ import annotations

from provision.cli.render import format_uptime, render_resize, render_vms
from provision.pve.lifecycle import ResizeResult, VmInfo
from provision.shape import Shape

SHAPE = Shape(2, 4096, "host")


def _vm(name: str, **changes: object) -> VmInfo:
    values: dict[str, object] = {
        "name": name,
        "vmid": 101,
        "node": "pve1",
        "status": "running",
        "shape": SHAPE,
        "ip": "10.0.0.5",
        "uptime_s": 3725,
        "tags": ("labctl",),
        "pending": False,
    }
    values.update(changes)
    return VmInfo(**values)  # type: ignore[arg-type]


def test_no_vms_says_so_and_how_to_see_every_vm() -> None:
    assert render_vms([], show_all=False) == "no labctl VMs (--all shows every VM)"
    assert render_vms([], show_all=True) == "no labctl VMs"


def test_ls_shows_one_aligned_row_per_vm_and_explains_pending() -> None:
    text = render_vms(
        [_vm("gemma"), _vm("other", tags=(), pending=True, lock="backup", ip=None, uptime_s=0)],
        show_all=True,
    )
    header, first, second, note = text.splitlines()
    assert header.split() == [
        "NAME",
        "VMID",
        "NODE",
        "STATUS",
        "CORES",
        "RAM",
        "CPU",
        "IP",
        "UPTIME",
    ]
    assert first.split()[:5] == ["gemma", "101", "pve1", "running", "2"]
    assert first.endswith("10.0.0.5  1h02m")
    assert "other (not managed)" in second and "running *pending (lock: backup)" in second
    assert second.split()[-2:] == ["-", "-"]
    assert header.index("VMID") == first.index("101") == second.index("101")
    assert note.startswith("* pending:")


def test_uptime_is_short() -> None:
    assert [format_uptime(s) for s in (0, 59, 3725, 2 * 86400 + 3600)] == [
        "-",
        "0m59s",
        "1h02m",
        "2d1h",
    ]


def test_resize_says_how_the_change_applies() -> None:
    bigger = Shape(4, 8192, "host")
    pending = ResizeResult("gemma", 101, SHAPE, bigger, running=True, pending_keys=("memory",))
    text = render_resize(pending)
    assert text.splitlines()[0] == "gemma (vmid 101)"
    assert "pending until the next reboot: memory" in text
    unchanged = ResizeResult("gemma", 101, SHAPE, SHAPE, running=True)
    assert render_resize(unchanged).endswith("already at that shape")
