#!/usr/bin/env bash
# Run labctl's whole test suite on this machine: set-up, lint, types, tests.
# Usage: ./scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff" >&2
ruff check provision tests bench
ruff format --check provision tests bench
echo "== mypy (provision, tests, bench)" >&2
mypy
echo "== engine: llama.cpp (built once per machine, cached) and the gemma2:2b-shaped model" >&2
python -m tests.doubles.engine
python -m tests.doubles.gguf_model --spec gemma2-2b
echo "== pytest" >&2
set +e
python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $status
