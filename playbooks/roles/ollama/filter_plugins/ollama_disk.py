"""Filter of the ollama role: is there room on disk for what this run will write?

The role installs the release by downloading the tarball into ollama_download_dir and unpacking
it into ollama_install_prefix (both exist at once until the tarball is removed), then pulls
each missing model into ollama_models_dir. These may be different filesystems: each part is
counted on the filesystem holding its directory (as the state module read it), a margin is
added once per filesystem, and the first filesystem without room is reported. Runs on the
controller: it costs the host no round trip.
"""

from __future__ import annotations

import math
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
# labctl up's default disk (provision/shape.py DEFAULT_DISK_GIB): never suggest less.
MIN_SUGGESTED_DISK_GIB = 32
# Room on the VM's disk outside the root filesystem (Ubuntu's cloud image: /boot and the EFI
# partition, ~1 GiB) when suggesting a disk size.
OTHER_PARTITIONS_GIB = 2


def _half_up(value: float) -> float:
    return math.floor(value + 0.5)


def _size(value: float, unit: int, rounding: Any = _half_up) -> str:
    """GiB with one decimal, MiB whole; free space rounds down, the need up, parts half up."""
    scaled = value / unit
    if unit == GIB:
        return f"{rounding(scaled * 10) / 10:.1f}"
    return f"{int(rounding(scaled))}"


def _suggested_disk_gib(fs: dict[str, Any], need: int) -> int:
    """A disk size whose root filesystem would have `need` free: what is used now plus the
    need, over the share not reserved for root (ext4 keeps 5 %), plus the other partitions;
    rounded up to a multiple of 8 GiB."""
    size, free, used = int(fs["size"]), int(fs["free"]), int(fs["used"])
    usable = (used + free) / size if size else 1.0  # the share not reserved for root
    gib = math.ceil((used + need) / max(usable, 0.5) / GIB) + OTHER_PARTITIONS_GIB
    return max(MIN_SUGGESTED_DISK_GIB, -(-gib // 8) * 8)


def ollama_disk_shortage(disk: dict[str, Any], *, install: bool, version: str,
                         download_dir: str, prefix: str, models_dir: str, tarball_bytes: int,
                         unpacked_bytes: int, models: list[str], model_bytes: dict[str, int],
                         default_model_bytes: int, margin_bytes: int) -> dict[str, Any]:
    """{} when every filesystem has room, else the first one without: its mount point, free
    and needed bytes, a disk size that would do (GiB), and a one-line `text`.

    disk: the state module's `disk` answer, {path: {mount, device, size, free, used}} (bytes).
    models: the models this run will pull, as /api/tags names them ("name:tag").
    """
    parts: list[tuple[str, str, int]] = []  # (directory, part, bytes)
    if install:
        parts += [(download_dir, "tarball", int(tarball_bytes)),
                  (prefix, "unpacked", int(unpacked_bytes))]
    sizes = {(k if ":" in k else k + ":latest"): int(v) for k, v in (model_bytes or {}).items()}
    parts += [(models_dir, "models", sizes.get(m, int(default_model_bytes))) for m in models]

    per_fs: dict[Any, dict[str, int]] = {}  # device -> part -> bytes, in order of appearance
    filesystems: dict[Any, dict[str, Any]] = {}
    for directory, part, count in parts:
        fs = (disk or {}).get(directory)
        if not fs:  # not read: nothing to check against
            continue
        device = fs.get("device", fs["mount"])
        filesystems[device] = fs
        per_fs.setdefault(device, {})
        per_fs[device][part] = per_fs[device].get(part, 0) + count
    for device, needs in per_fs.items():
        fs = filesystems[device]
        mount = str(fs["mount"])
        need = sum(needs.values()) + int(margin_bytes)
        free = int(fs["free"])
        if free >= need:
            continue
        who = [f"Ollama {version}"] if {"tarball", "unpacked"} & needs.keys() else []
        if "models" in needs:
            who.append(models[0] if len(models) == 1 else f"{len(models)} models")
        one = len(who) == 1 and not ("models" in needs and len(models) > 1)
        unit, name = (GIB, "GiB") if need >= GIB else (MIB, "MiB")
        breakdown = " + ".join(f"{part} {_size(n, unit)}" for part, n in needs.items())
        text = (f"not enough disk on {mount}: {_size(free, unit, math.floor)} {name} free, "
                f"{' and '.join(who)} need{'s' if one else ''} "
                f"{_size(need, unit, math.ceil)} {name} there ({breakdown} + margin "
                f"{_size(int(margin_bytes), unit)} {name})")
        return {"mount": mount, "free": free, "need": need,
                "suggest_gib": _suggested_disk_gib(fs, need), "text": text}
    return {}


class FilterModule:
    """The role's filters."""

    def filters(self) -> dict[str, Any]:
        return {"ollama_disk_shortage": ollama_disk_shortage}
