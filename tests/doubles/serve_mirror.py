"""Serve the Ollama test double's release and a model from a local mirror, until killed.

Used by scripts/quickstart.sh: on the built-in simulator there is no internet, so the guests
install the *test double* of Ollama from this mirror. Prints the mirror URL on stdout.

    python -m tests.doubles.serve_mirror --root DIR --host 10.213.99.1 --port 8080 \
        --model gemma2:2b=96M
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.doubles import OllamaMirror, prepare_mirror

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _model(text: str) -> tuple[str, int]:
    name, _, size = text.rpartition("=")
    if not name or not size or size[-1].upper() not in _UNITS or not size[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE like gemma2:2b=96M, got {text!r}")
    return name, int(size[:-1]) * _UNITS[size[-1].upper()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", type=_model, action="append", default=[])
    args = parser.parse_args(argv)
    models = dict(args.model) or None
    release, _ = prepare_mirror(args.root, models=models)
    mirror = OllamaMirror(args.root, host=args.host, port=args.port).start()
    print(f"{mirror.url} {release.version} {mirror.download_base_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    mirror.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
