"""Benchmark: `labctl up --no-deploy` against the simulator with known task and boot durations.

Prints, from one run on this machine:
- labctl's wall time per `up` / the simulated floor (target <= 1.15). The floor is what a perfect
  client would still wait for: the clone task, then the start task or the guest agent coming up
  (whichever is later; the agent starts counting when the start task begins).
- API requests per `up` besides polls (target <= 30), with task/agent polls counted apart.
- `labctl --help` / `python -c pass` start-up time (target <= 2).

VMs are real systemd-nspawn guests (root needed) on bridge llbr41 / 10.213.41.0/24, prefix ll41,
so SSH at the end is real. The guest agent takes PVE's 3 s to answer "not running".

Usage: python -m bench.up_floor [--runs 3] [--clone 4] [--start 1] [--boot 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import labctl_env, lacks_root, new_ssh_key
from provision.sim.server import SimServer

BRIDGE, SUBNET, PREFIX = "llbr41", "10.213.41.0/24", "ll41"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def startup_ratio(env: dict[str, str], repeats: int = 15) -> tuple[float, float, float]:
    """min wall time of `labctl --help` and of `python -c pass`, and their ratio."""
    helps, passes = [], []
    for _ in range(repeats):
        helps.append(timed([sys.executable, "-m", "provision", "--help"], env)[0])
        passes.append(timed([sys.executable, "-c", "pass"], env)[0])
    return min(helps), min(passes), min(helps) / min(passes)


def write_lab(path: Path, server: SimServer, key: Path) -> None:
    creds = server.credentials
    path.write_text(
        f'[proxmox]\nhost = "127.0.0.1"\nport = {server.port}\n'
        f'token_id = "{creds["token_id"]}"\ntoken_secret = "{creds["token_secret"]}"\n'
        f'fingerprint = "{server.fingerprint}"\n\n[template]\nname = "9000"\n\n'
        f'[ssh]\nuser = "labctl"\nkey = "{key}"\n\n[timeouts]\nagent = 120\nssh = 120\n'
    )
    path.chmod(0o600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clone", type=float, default=4.0, help="qmclone task seconds")
    parser.add_argument("--start", type=float, default=1.0, help="qmstart task seconds")
    parser.add_argument(
        "--boot", type=float, default=8.0, help="seconds from start until the guest agent answers"
    )
    args = parser.parse_args()
    if lacks_root("up_floor"):
        return 2
    from provision.sim.guests.container import ContainerBackend

    env = labctl_env()
    floor = args.clone + max(args.start, args.boot)
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        base = Path(tmp)
        key = new_ssh_key(base)
        backend = ContainerBackend(base / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX)
        settings = {
            "agent_delay": args.boot,
            "agent_timeout": 3.0,
            "auth_failure_delay": 3.0,
            "task_durations": {
                "qmclone": args.clone,
                "qmstart": args.start,
                "qmconfig": 0.5,
                "qmshutdown": 1.0,
                "qmstop": 0.5,
                "qmdestroy": 0.5,
                "resize": 0.5,
            },
        }
        with SimServer(base / "sim", backend=backend, **settings) as server:
            lab = base / "labctl.toml"
            write_lab(lab, server, key)
            env["LABCTL_STATE_DIR"] = str(base / "state")
            labctl = [sys.executable, "-m", "provision", "--config", str(lab)]
            walls, calls, polls = [], [], []
            for run in range(args.runs):
                name = f"bench{run}"
                wall, done = timed(
                    [*labctl, "--json", "up", name, "--cores", "1", "--ram", "1G", "--no-deploy"],
                    env,
                )
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                stats = json.loads(done.stdout)["api"]
                walls.append(wall)
                calls.append(stats["calls"])
                polls.append(stats["polls"])
                print(
                    f"run {run}: up {wall:.2f}s (floor {floor:.2f}s, ratio {wall / floor:.3f}); "
                    f"{stats['calls']} API requests + {stats['polls']} polls",
                    flush=True,
                )
                subprocess.run(
                    [*labctl, "down", name, "--yes"], env=env, check=True, capture_output=True
                )
            help_s, pass_s, help_ratio = startup_ratio(env)
    wall = statistics.median(walls)
    print()
    print(
        f"labctl up (no deploy), median of {args.runs}: {wall:.2f}s; simulated floor "
        f"{floor:.2f}s (clone {args.clone:g}s + max(start {args.start:g}s, agent "
        f"{args.boot:g}s)) -> ratio {wall / floor:.3f}  (target <= 1.15)"
    )
    print(
        f"API requests per up besides polls: {max(calls)} (target <= 30); polls: "
        f"median {statistics.median(polls):g}"
    )
    print(
        f"labctl --help {help_s * 1000:.0f} ms / python -c pass {pass_s * 1000:.0f} ms -> "
        f"ratio {help_ratio:.2f}  (target <= 2)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
