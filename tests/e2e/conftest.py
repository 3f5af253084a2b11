"""End-to-end fixtures: the real `labctl` CLI (a subprocess) against the PVE simulator whose VMs
are real, shape-limited container guests running the Ollama TEST DOUBLE with the REAL engine
(tests/support/e2e_lab.py).

One simulator, one mirror and one VM for the whole session (boots, deploys and model loads are
the slow part on a 2-core machine). Network resources are this directory's own: bridge lebr70,
subnet 10.213.70.0/24, guest prefix le70. Everything is torn down at the end, and the last test
checks that nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.e2e_lab import BRIDGE, PREFIX, SUBNET, VM, E2eLab, guest_lab


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eLab]:
    with guest_lab(
        tmp_path_factory.mktemp("e2e"), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, vms=(VM,)
    ) as lab:
        yield lab
