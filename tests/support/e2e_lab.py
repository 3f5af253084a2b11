"""The end-to-end lab: the PVE simulator whose VMs are real, shape-limited container guests, a
local mirror serving the Ollama TEST DOUBLE with the REAL engine, and a lab file that deploys it
(tests/e2e, bench/probe_accuracy.py).

The model: a GGUF file with gemma2:2b's exact architecture and size (1.63 GB, random weights,
tests/doubles/gguf_model.py), run by the real llama.cpp llama-server (tests/doubles/engine.py)
that the double starts as Ollama 0.32.15 does. Guests get their VM's real RAM (mem_scale 1).
tests/e2e's own network: bridge lebr70, subnet 10.213.70.0/24, guest prefix le70.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.lab import FAST, Lab, guest_backend

BRIDGE, SUBNET, PREFIX = "lebr70", "10.213.70.0/24", "le70"
MODEL = "gemma2:2b"
MODEL_BYTES = 1_629_000_000  # the gemma2:2b-shaped GGUF: within 0.1 % of the real blob
VM = "e2e"
ORIGINAL = ("2", "4G")  # the VM's shape between tests (cores, RAM)


@dataclass
class E2eLab:
    """The CLI lab (lab file + state dir) plus the pieces behind it, torn down once."""

    cli: Lab
    backend: Any
    server: Any
    mirror: Any
    closed: bool = False
    outputs: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Stop the simulator (which closes the guest backend) and the mirror; idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.server.stop()
        finally:
            self.mirror.stop()


@contextlib.contextmanager
def guest_lab(
    work: Path, *, bridge: str, subnet: str, prefix: str, nodes: int = 1, vms: tuple[str, ...] = ()
) -> Iterator[E2eLab]:
    """Simulator (container guests on its own bridge) + mirror + a lab file that deploys the
    Ollama TEST DOUBLE from that mirror; `vms` still there at the end are brought down."""
    from provision.sim.server import SimServer
    from tests.doubles import OllamaMirror, prepare_mirror
    from tests.doubles.engine import ensure_engine
    from tests.doubles.gguf_model import GEMMA2_2B, ensure_model

    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    release, _ = prepare_mirror(
        work / "mirror",
        models={MODEL: ensure_model(GEMMA2_2B)},
        llama_server=ensure_engine().server,
    )
    backend = guest_backend(
        work / "guests",
        bridge,
        subnet,
        prefix,
        mem_scale=1.0,
        needs="e2e on container guests needs root (netns, overlayfs, cgroups)",
    )
    try:
        mirror = OllamaMirror(work / "mirror", host=str(backend.leases.host_ip)).start()
    except BaseException:
        backend.close()
        raise
    server = SimServer(
        work / "sim",
        nodes=nodes,
        backend=backend,
        node_cpus=8,
        node_memory_gib=32,
        **{**FAST, "agent_delay": 0.5},
    )
    try:
        server.start()
    except BaseException:
        mirror.stop()
        backend.close()
        raise
    cli = Lab(server, work, key, in_process=False)  # full runs: labctl as users start it
    config = cli.write(probe={"model": MODEL})
    # What a user with a local mirror writes; OLLAMA_DOUBLE_REGISTRY is the double's own variable.
    config.write_text(
        config.read_text()
        + (
            f'\n[deploy]\nmodels = ["{MODEL}"]\nollama_version = "{release.version}"\n'
            f'ollama_base_url = "{mirror.download_base_url}"\n'
            "extra_vars = { ollama_environment = { "
            f'OLLAMA_DOUBLE_REGISTRY = "{mirror.url}" }} }}\n'
        )
    )
    lab = E2eLab(cli, backend, server, mirror)
    try:
        yield lab
    finally:
        with contextlib.suppress(Exception):
            for name in vms:
                if not lab.closed and cli.vm_named(name) is not None:
                    cli.run("down", name, "--yes", timeout=120)
        lab.close()
