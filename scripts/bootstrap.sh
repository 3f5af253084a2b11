#!/usr/bin/env bash
# Set up everything labctl and its simulator need on a fresh Debian 12 / Ubuntu 24.04 machine:
# Debian packages (guests for the simulator, ssh, zstd) and a virtualenv with labctl installed.
# Idempotent; run as root (the simulator's container guests need root).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip    # labctl itself
  openssh-client openssh-server       # ssh-keygen; sshd binary for tests
  systemd-container debootstrap debian-archive-keyring lxcfs util-linux # simulator guests
  iproute2 zstd ca-certificates curl  # guest networks; Ollama release archives
  cmake ninja-build g++               # llama.cpp for the Ollama test double (tests/doubles/engine.py)
)

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing packages ${need_apt[*]}; run as root (or: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps apt from starting sshd/lxcfs services on the host; the simulator runs its own.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [[ $(id -u) -eq 0 ]]; then
  ./scripts/sim-host-setup.sh >/dev/null  # packages are in place; this raises the inotify limits
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
echo "bootstrap: pip install -e .[sim,test]" >&2
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e ".[sim,test]"; } >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
echo "bootstrap: done (activate with: source .venv/bin/activate)" >&2
