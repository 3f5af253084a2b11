"""Tables of known sweep results for strategy tests and bench/sweep.py (no VM involved).

`gemma_table` models gemma2:2b (Q4, ~1.6 GB of weights) on CPU the way probes on real hardware
and on the simulator's shaped guests behave: the runner needs ~2.9 GiB at peak (below that it is
OOM-killed), decode tok/s rises with cores and flattens at the memory-bandwidth knee, and a cpu
type without AVX2 (x86-64-v2-AES, kvm64) runs at well under half the speed.
"""

from __future__ import annotations

import random

from provision.shape import Shape
from provision.sweep.model import Measurement, Space, Status

MATRIX = Space(
    cores=(1, 2, 4, 8, 12),
    ram_mib=(2048, 4096, 8192, 16384, 32768),
    cpu_types=("host", "x86-64-v2-AES"),
)

# tok/s per vCPU count with AVX2 (host): linear at first, flat past the bandwidth knee.
_HOST_TPS = {
    1: 3.1,
    2: 5.9,
    3: 8.2,
    4: 10.4,
    5: 11.3,
    6: 11.9,
    8: 12.4,
    10: 12.5,
    12: 12.5,
    16: 12.4,
}
_SLOWDOWN = {"host": 1.0, "x86-64-v2-AES": 0.42, "kvm64": 0.38}


def gemma_tps(cores: int, cpu_type: str) -> float:
    base = _HOST_TPS.get(cores) or _HOST_TPS[max(k for k in _HOST_TPS if k <= cores)]
    return round(base * _SLOWDOWN.get(cpu_type, 0.5), 2)


def gemma_measurement(shape: Shape, *, peak_used_mib: int = 2970, os_mib: int = 350) -> Measurement:
    if shape.memory_mib < peak_used_mib + os_mib // 2:
        return Measurement(
            shape,
            Status.OOM,
            mem_total_mib=shape.memory_mib,
            peak_used_mib=shape.memory_mib,
            error="runner OOM-killed",
        )
    tps = gemma_tps(shape.cores, shape.cpu_type)
    ttft = round(0.35 + 3.2 / (tps or 1.0), 3)
    # a little more page cache in bigger VMs: used grows slowly with RAM
    used = peak_used_mib + min(shape.memory_mib // 64, 400)
    return Measurement(
        shape,
        Status.OK,
        eval_tps=tps,
        ttft_s=ttft,
        mem_total_mib=shape.memory_mib - 180,
        peak_used_mib=used,
    )


def gemma_table(space: Space = MATRIX) -> dict[Shape, Measurement]:
    return {s: gemma_measurement(s) for s in space.shapes()}


def random_monotone_table(rng: random.Random) -> tuple[Space, dict[Shape, Measurement]]:
    """A random table that obeys the smart strategy's assumptions A1 and A2.

    Per cpu type: one RAM threshold below which the model is OOM-killed; tok/s non-decreasing in
    cores up to a plateau, optionally scaled by a factor non-decreasing in RAM; TTFT falling with
    tok/s; peak memory used the same for all shapes of a type (so free memory grows with RAM).
    Ties (equal tok/s on a plateau, identical cpu types) come up often.
    """
    cores = tuple(sorted(rng.sample(range(1, 17), rng.randint(1, 7))))
    ram = tuple(
        sorted(
            rng.sample([1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768], rng.randint(1, 6))
        )
    )
    types = tuple(rng.sample(["host", "x86-64-v2-AES", "kvm64", "EPYC"], rng.randint(1, 3)))
    space = Space(cores, ram, types)
    table: dict[Shape, Measurement] = {}
    for cpu_type in types:
        threshold = rng.choice([*ram, ram[-1] + 1])  # smallest RAM that fits (maybe none)
        used = rng.randint(300, 900)
        knee = rng.choice(cores)
        per_core = rng.choice([0.5, 1.0, 2.0, 3.0])
        ram_factor = dict(zip(ram, sorted(rng.choice([0.8, 0.9, 1.0]) for _ in ram), strict=True))
        for c in cores:
            tps_c = round(per_core * min(c, knee), 2)
            for r in ram:
                shape = Shape(c, r, cpu_type)
                if r < threshold:
                    table[shape] = Measurement(shape, Status.OOM, error="runner OOM-killed")
                    continue
                tps = round(tps_c * ram_factor[r], 2)
                table[shape] = Measurement(
                    shape,
                    Status.OK,
                    eval_tps=tps,
                    ttft_s=round(10.0 / tps, 3),
                    mem_total_mib=r,
                    peak_used_mib=min(used, r),
                )
    return space, table
