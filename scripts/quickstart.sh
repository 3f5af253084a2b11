#!/usr/bin/env bash
# labctl's main job, end to end, on the built-in Proxmox VE simulator (no Proxmox, no internet):
#   simulator (real container guests) -> up (clone, boot, IP, pinned SSH key, Ansible deploy of
#   Ollama + model) -> probe -> a small sweep -> report -> down.
# On the simulator, guests install the Ollama *test double* from a local mirror (tests/doubles),
# because the real Ollama cannot be downloaded here. Its runner is the REAL llama.cpp llama-server
# (built here once from PyPI's llama-cpp-python sdist) and the model a GGUF file with gemma2:2b's
# architecture and size and random weights: speed and memory are real, the text is not.
# Against a real Proxmox VE, use labctl directly.
# Run as root on Debian 12 (the simulator's guests are systemd-nspawn containers).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
./scripts/bootstrap.sh
export PATH="$REPO/.venv/bin:$PATH"

WORK=${LABCTL_QUICKSTART_DIR:-$REPO/.quickstart}
PORT=${LABCTL_QUICKSTART_PORT:-18006}
BRIDGE=lqbr0 SUBNET=10.213.99.0/24 HOST_IP=10.213.99.1 MIRROR_PORT=18080
VM=demo
mkdir -p "$WORK"
export LABCTL_STATE_DIR="$WORK/state" LABCTL_CONFIG="$WORK/labctl.toml"
pids=()
cleanup() {
  labctl down "$VM" --yes >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*" >&2; }

say "starting the Proxmox VE simulator on https://127.0.0.1:$PORT (guests on $BRIDGE $SUBNET)"
labctl sim serve --state "$WORK/sim" --port "$PORT" --guests container \
  --bridge "$BRIDGE" --subnet "$SUBNET" --node-cpus 8 --node-memory 32 \
  >"$WORK/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do  # the first start builds the guest template (about a minute)
  grep -q "Press Ctrl-C" "$WORK/sim.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$WORK/sim.log" >&2; exit 1; }
  sleep 1
done
grep -E "listening|TLS|backend" "$WORK/sim.log" >&2
labctl sim lab-file --state "$WORK/sim" --port "$PORT" --out "$WORK/labctl.toml" \
  --ssh-key "$WORK/id_ed25519" --force

say "serving the Ollama test double (real llama-server) and gemma2:2b from http://$HOST_IP:$MIRROR_PORT"
echo "model: random weights, gemma2:2b's architecture and size: speed and memory are real, the text is not" >&2
python -m tests.doubles.serve_mirror --root "$WORK/mirror" --host "$HOST_IP" \
  --port "$MIRROR_PORT" --model gemma2:2b=gemma2-2b >"$WORK/mirror.url" 2>"$WORK/mirror.log" &
pids+=($!)
for _ in $(seq 1 900); do  # the first run builds llama.cpp (~7 min on 2 cores) and the model
  [[ -s "$WORK/mirror.url" ]] && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$WORK/mirror.log" >&2; exit 1; }
  sleep 1
done
read -r MIRROR_URL OLLAMA_VERSION DOWNLOAD_BASE <"$WORK/mirror.url"
cat >>"$WORK/labctl.toml" <<TOML

[deploy]
models = ["gemma2:2b"]
ollama_version = "$OLLAMA_VERSION"
ollama_base_url = "$DOWNLOAD_BASE"
# test double only: where it pulls models from instead of registry.ollama.ai
extra_vars = { ollama_environment = { OLLAMA_DOUBLE_REGISTRY = "$MIRROR_URL" } }
TOML

say "labctl up $VM --cores 2 --ram 3G   (clone, boot, agent IP, pinned host key, SSH, Ansible)"
labctl up "$VM" --cores 2 --ram 3G
labctl ls

say "labctl probe $VM --runs 3"
labctl probe "$VM" --runs 3 --warmup 1 --num-predict 32

say "labctl sweep $VM --cores 1,2 --ram 2G,3G --min-tps 5"
set +e
labctl sweep "$VM" --cores 1,2 --ram 2G,3G --min-tps 5 --runs 2 --num-predict 32
sweep_rc=$?
set -e
[[ $sweep_rc -eq 0 || $sweep_rc -eq 8 ]] || exit $sweep_rc

say "labctl report (latest sweep) --html"
labctl report --html

say "labctl down $VM --yes"
labctl down "$VM" --yes
echo "quickstart finished; state and reports are under $WORK/state" >&2
