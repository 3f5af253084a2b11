#!/usr/bin/env python3
"""Does `labctl probe` measure what llama.cpp's own benchmark measures? Ratios, in one guest.

In one simulator guest (a systemd container limited to the VM's cores and RAM), for 1 and 2
vCPUs: `labctl probe` through the Ollama API (the test double starting the REAL llama-server on a
GGUF file with gemma2:2b's architecture and size), then `llama-bench` (the same llama.cpp build)
on the same model file, with the same thread count, the same prompt length as the probe's
prompt_eval_count and the same number of generated tokens. Printed: probe / llama-bench for eval
tok/s (tg) and prompt tok/s (pp). Target: within +-5 %. A benchmark, not a test: nothing is
asserted, the figures are printed.

Ollama counts cached prompt tokens in prompt_eval_count but not in prompt_eval_duration; the
probe puts a per-run nonce before the chat template's first token so that no run shares a
cached prefix (the method the probe reports is printed). --prompt long (several hundred
tokens) or short (the probe's default prompt, about 20 tokens).

    sudo python -m bench.probe_accuracy [--cores 1,2] [--runs 3] [--num-predict 32] \
        [--prompt long|short]

Needs root (container guests), the Debian packages of scripts/bootstrap.sh, ~4 GiB of free RAM;
the first run builds llama.cpp (~7 min) and writes the 1.6 GB model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.doubles.engine import ensure_engine
from tests.doubles.gguf_model import GEMMA2_2B, ensure_model, model_digest
from tests.support.e2e_lab import guest_lab
from tests.support.guests import system_ssh
from tests.support.lab import Lab

VM = "acc"
BRIDGE, SUBNET, PREFIX = "lbbr91", "10.213.91.0/24", "lb91"
MODELS_DIR = "/usr/share/ollama/.ollama/models"  # the role's ollama_models_dir
PROMPT = " ".join(
    f"Paragraph {i}: the sky is blue because sunlight scatters off the molecules of the air, "
    "and short wavelengths scatter more than long ones, so the whole dome looks blue at noon."
    for i in range(6)
)
LIMIT_PCT = 5.0


def ssh(lab: Lab, ip: str, command: str, stdin: bytes | None = None, timeout: float = 900) -> str:
    done = subprocess.run(
        system_ssh(lab.key, lab.state / "known_hosts", f"labctl@{ip}", command),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ssh {command!r} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def cli(lab: Lab, *args: str, timeout: float = 900) -> Any:
    result = lab.run(*args, timeout=timeout)
    if result.code != 0:
        raise SystemExit(f"labctl {' '.join(args)} failed ({result.code}): {result.stderr}")
    return result


def copy_llama_bench(lab: Lab, ip: str) -> str:
    """llama-bench and its libraries into the guest, beside nothing of Ollama's."""
    engine = ensure_engine()
    ssh(lab, ip, "mkdir -p /tmp/llama-bench")
    for path in [engine.bench, *engine.libraries]:
        ssh(
            lab,
            ip,
            f"cat > /tmp/llama-bench/{path.name} && chmod 755 /tmp/llama-bench/{path.name}",
            stdin=path.read_bytes(),
        )
    return "LD_LIBRARY_PATH=/tmp/llama-bench /tmp/llama-bench/llama-bench"


def probe(lab: Lab, cores: int, runs: int, num_predict: int, prompt_file: Path) -> dict[str, Any]:
    prompt = ["--prompt-file", str(prompt_file)] if prompt_file.read_text() else []
    document = cli(
        lab,
        "probe",
        VM,
        "--runs",
        str(runs),
        "--warmup",
        "1",
        "--num-predict",
        str(num_predict),
        "--num-thread",
        str(cores),
        *prompt,
        "--json",
    ).json
    measured = [r for r in document["runs"] if not r["warmup"] and r["ok"]]
    return {
        "eval_tps": statistics.median(r["eval_tps"] for r in measured),
        "prompt_tps": statistics.median(r["prompt_tps"] for r in measured),
        "prompt_tokens": int(statistics.median(r["ollama"]["prompt_eval_count"] for r in measured)),
        "eval_tokens": int(statistics.median(r["ollama"]["eval_count"] for r in measured)),
        "cache_bust": document["cache_bust"],
    }


def llama_bench(
    lab: Lab, ip: str, command: str, blob: str, threads: int, prompt: int, generate: int, runs: int
) -> dict[str, float]:
    """pp at the probe's prompt length; tg after that many tokens are in the KV cache (-d), as
    in the probe, where each generated token attends to the whole prompt."""
    # the loading mode Ollama uses on CPU (no mmap) and its flash-attention setting
    common = f"sudo -u ollama env {command} -m {blob} -t {threads} -r {runs} -lm none -fa auto"
    pp = json.loads(ssh(lab, ip, f"{common} -p {prompt} -n 0 -o json"))
    tg = json.loads(ssh(lab, ip, f"{common} -p 0 -n {generate} -d {prompt} -o json"))
    return {"prompt_tps": float(pp[0]["avg_ts"]), "eval_tps": float(tg[0]["avg_ts"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-predict", type=int, default=32)
    parser.add_argument("--prompt", choices=("long", "short"), default="long")
    args = parser.parse_args()
    cores_list = [int(c) for c in args.cores.split(",")]
    blob = f"{MODELS_DIR}/blobs/{model_digest(ensure_model(GEMMA2_2B)).replace(':', '-')}"
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="probe-accuracy-") as scratch,
        guest_lab(Path(scratch), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, vms=(VM,)) as lab,
    ):
        prompt_file = Path(scratch) / "prompt.txt"
        prompt_file.write_text(PROMPT if args.prompt == "long" else "")
        cli(lab.cli, "up", VM, "--cores", str(max(cores_list)), "--ram", "4G")
        for cores in cores_list:
            cli(lab.cli, "resize", VM, "--cores", str(cores), "--ram", "4G", "--reboot")
            [ip] = [v["ip"] for v in cli(lab.cli, "--json", "ls").json["vms"] if v["name"] == VM]
            command = copy_llama_bench(lab.cli, ip)
            measured = probe(lab.cli, cores, args.runs, args.num_predict, prompt_file)
            ssh(lab.cli, ip, "sudo systemctl stop ollama")  # no runner competing for the CPUs
            reference = llama_bench(
                lab.cli,
                ip,
                command,
                blob,
                cores,
                measured["prompt_tokens"],
                measured["eval_tokens"],
                args.runs,
            )
            ssh(lab.cli, ip, "sudo systemctl start ollama")
            rows.append((cores, measured, reference))
            print(
                f"{cores} vCPU: probe eval {measured['eval_tps']:.2f} / prompt "
                f"{measured['prompt_tps']:.2f} tok/s ({measured['prompt_tokens']} prompt "
                f"tokens); llama-bench tg{measured['eval_tokens']}@d{measured['prompt_tokens']} "
                f"{reference['eval_tps']:.2f} / pp{measured['prompt_tokens']} "
                f"{reference['prompt_tps']:.2f} tok/s; cached tokens kept out by "
                f"{measured['cache_bust']}",
                flush=True,
            )
    print(
        f"\nprobe / llama-bench, same guest, model file and threads (target within "
        f"+-{LIMIT_PCT:g} %):"
    )
    print(f"{'vCPUs':>5}  {'eval (tg)':>10}  {'prompt (pp)':>11}")
    for cores, measured, reference in rows:
        eval_ratio = measured["eval_tps"] / reference["eval_tps"]
        prompt_ratio = measured["prompt_tps"] / reference["prompt_tps"]
        print(f"{cores:>5}  {eval_ratio:>10.3f}  {prompt_ratio:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
