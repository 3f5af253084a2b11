"""Serve the Ollama test double's release and models from a local mirror, until killed.

Used by scripts/quickstart.sh: on the built-in simulator there is no internet, so the guests
install the *test double* of Ollama from this mirror. The double's runner is the REAL llama.cpp
llama-server (built once, tests/doubles/engine.py) and the model a GGUF file with gemma2:2b's
architecture and size and random weights (tests/doubles/gguf_model.py): speed and memory are
real, the text is not. Prints "<mirror url> <version> <download base url>" on stdout.

    python -m tests.doubles.serve_mirror --root DIR --host 10.213.99.1 --port 8080 \
        --model gemma2:2b=gemma2-2b          # GGUF spec: gemma2-2b (full size), small, tiny
        --model hashed:latest=96M            # random bytes for the hashing runner (no engine)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.doubles import OllamaMirror, prepare_mirror
from tests.doubles.engine import EngineBuildError, ensure_engine
from tests.doubles.gguf_model import SPECS, ensure_model

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _model(text: str) -> tuple[str, int | str]:
    name, _, what = text.rpartition("=")
    if name and what in SPECS:
        return name, what
    if not name or not what or what[-1].upper() not in _UNITS or not what[:-1].isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=SPEC ({', '.join(SPECS)}) or NAME=SIZE like x:latest=96M, got {text!r}"
        )
    return name, int(what[:-1]) * _UNITS[what[-1].upper()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", type=_model, action="append", default=[])
    args = parser.parse_args(argv)
    wanted = dict(args.model) or {"gemma2:2b": "gemma2-2b"}
    models: dict[str, int | Path] = {
        name: ensure_model(SPECS[what]) if isinstance(what, str) else what
        for name, what in wanted.items()
    }
    try:
        engine = ensure_engine()
    except EngineBuildError as err:
        print(f"serve_mirror: {err}", file=sys.stderr)
        return 1
    release, _ = prepare_mirror(args.root, models=models, llama_server=engine.server)
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
