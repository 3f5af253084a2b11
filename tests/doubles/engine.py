"""The real inference engine for the Ollama test double: llama.cpp built here from a pinned sdist.

Ollama >= 0.30 runs models with the upstream `llama-server` from its `lib/ollama/` bundle. The
real Ollama binary cannot be downloaded where labctl's tests run, but llama.cpp can be built from
the tree that PyPI's `llama-cpp-python` source distribution vendors (`vendor/llama.cpp`). This
module fetches that one pinned file (sha256 checked), builds `llama-server` and `llama-bench`
on the host, CPU only, and caches the binaries under the user's cache dir, keyed by the source
hash, the build flags and the host CPU's flags (GGML_NATIVE targets the build host's CPU, which
the simulator's guests share). Concurrent builds of one key wait on a lock; a missing build tool
is one line naming the Debian packages.

    python -m tests.doubles.engine            # build (or find) it; prints the bin directory
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/ec/e9/"
    "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/" + SDIST_NAME
)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_BYTES = 76_589_250
VENDORED_TREE = "llama_cpp_python-0.3.36/vendor/llama.cpp"  # llama.cpp commit 0c1e570

TARGETS = ("llama-server", "llama-bench")
# CPU only, static ggml/llama libraries, nothing fetched at configure time (no web UI, no
# curl/OpenSSL model downloads). OpenMP stays on (upstream's default): on these 2-vCPU machines
# ggml's own thread pool (GGML_OPENMP=OFF) measured 2 threads *slower* than 1 unless pinned
# (pp64 11.4 vs 19.4 tok/s), OpenMP gives the expected ~2x. libgomp.so.1 is copied beside the
# binaries and ships in lib/ollama/, where Ollama points LD_LIBRARY_PATH.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
BUILD_VERSION = 2  # bump when the build steps change
# shared libraries the binaries need that a minimal Debian/Ubuntu guest may lack: shipped along
BUNDLED_LIBS = ("libgomp.so.1",)
# Debian packages per tool the build runs
BUILD_TOOLS = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++", "gcc": "gcc"}
_STAMP = "engine.json"

Log = Callable[[str], None]


class EngineBuildError(Exception):
    """The engine could not be fetched or built; the message is one line saying why."""


@dataclass(frozen=True)
class Engine:
    """A built llama.cpp: the two binaries the double and the benchmarks use."""

    root: Path
    key: str

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def bench(self) -> Path:
        return self.bin_dir / "llama-bench"

    @property
    def libraries(self) -> list[Path]:
        """Shared libraries bundled beside the binaries (LD_LIBRARY_PATH=bin_dir to use them)."""
        return sorted(self.bin_dir.glob("*.so*"))

    def info(self) -> dict[str, object]:
        return dict(json.loads((self.root / _STAMP).read_text()))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return ""


def engine_key() -> str:
    """Cache key: source hash + build flags + targets + the CPU the native build targets."""
    blob = json.dumps(
        {
            "sdist": SDIST_SHA256,
            "flags": CMAKE_FLAGS,
            "targets": TARGETS,
            "version": BUILD_VERSION,
            "cpu": _cpu_flags(),
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "llama.cpp"


def missing_tools() -> list[str]:
    """Debian packages whose tools the build needs and this machine lacks."""
    return sorted({pkg for tool, pkg in BUILD_TOOLS.items() if shutil.which(tool) is None})


def find_engine(cache_dir: Path | None = None) -> Engine | None:
    """The cached engine for this source/flags/CPU, or None when it has not been built."""
    key = engine_key()
    root = (cache_dir or default_cache_dir()) / key
    engine = Engine(root, key)
    if (root / _STAMP).is_file() and engine.server.is_file() and engine.bench.is_file():
        return engine
    return None


def ensure_engine(cache_dir: Path | None = None, log: Log | None = None) -> Engine:
    """The cached engine, building it first when needed (one builder at a time per key)."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    cache = cache_dir or default_cache_dir()
    if engine := find_engine(cache):
        return engine
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache / f"{engine_key()}.lock", say):
        if engine := find_engine(cache):  # another process built it while we waited
            return engine
        return _build(cache, say)


@contextlib.contextmanager
def _lock(path: Path, say: Log) -> Iterator[None]:
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"engine: another process is building llama.cpp ({path}); waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_sdist(dest_dir: Path, say: Log) -> Path:
    """The pinned sdist: LABCTL_LLAMA_CPP_SDIST (a local copy) or a download; sha256 checked."""
    local = os.environ.get("LABCTL_LLAMA_CPP_SDIST")
    if local:
        source = Path(local)
        if not source.is_file():
            raise EngineBuildError(f"LABCTL_LLAMA_CPP_SDIST={local}: no such file")
        _check_sha256(source)
        return source
    target = dest_dir / SDIST_NAME
    if target.is_file():
        with contextlib.suppress(EngineBuildError):
            _check_sha256(target)
            return target
    say(f"engine: downloading {SDIST_NAME} ({SDIST_BYTES / 1e6:.1f} MB) from PyPI")
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(SDIST_URL, timeout=120) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise EngineBuildError(f"cannot download {SDIST_URL}: {err}") from err
    _check_sha256(partial)
    partial.replace(target)
    return target


def _check_sha256(path: Path) -> None:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    if hasher.hexdigest() != SDIST_SHA256:
        raise EngineBuildError(
            f"{path}: sha256 {hasher.hexdigest()} is not the pinned {SDIST_SHA256}"
        )


def _extract_tree(sdist: Path, dest: Path) -> Path:
    prefix = VENDORED_TREE + "/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise EngineBuildError(f"{sdist} has no {VENDORED_TREE}")
        tar.extractall(dest, members=members, filter="data")
    return dest / VENDORED_TREE


def _run(command: list[str], log_file: Path, what: str) -> None:
    with log_file.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise EngineBuildError(
            f"llama.cpp {what} failed (exit {result.returncode}): {tail[0]} (full log: {log_file})"
        )


def _linked_libraries(binary: Path) -> list[tuple[str, Path]]:
    """(soname, file) of the BUNDLED_LIBS the binary links, where ldd finds them here."""
    output = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for line in output.splitlines():
        name, _, rest = line.strip().partition(" => ")
        path = Path(rest.split(" (")[0]) if rest else None
        if name in BUNDLED_LIBS and path is not None and path.is_file():
            found.append((name, path.resolve()))
    return found


def _build(cache: Path, say: Log) -> Engine:
    missing = missing_tools()
    if missing:
        raise EngineBuildError(
            "building llama.cpp needs the Debian packages "
            f"{' '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    key = engine_key()
    root = cache / key
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=cache) as scratch_text:
        scratch = Path(scratch_text)
        sdist = fetch_sdist(cache, say)
        say(
            f"engine: building llama.cpp ({', '.join(TARGETS)}) from {SDIST_NAME}; "
            "about 5 minutes on 2 cores, once per machine"
        )
        tree = _extract_tree(sdist, scratch)
        build = scratch / "build"
        log_file = cache / f"{key}.build.log"
        log_file.write_text("")
        jobs = str(max(1, len(os.sched_getaffinity(0))))
        _run(
            ["cmake", "-S", str(tree), "-B", str(build), "-G", "Ninja", *CMAKE_FLAGS],
            log_file,
            "configure",
        )
        _run(["cmake", "--build", str(build), "-j", jobs, "--target", *TARGETS], log_file, "build")
        staging = cache / f"{key}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        for target in TARGETS:
            shutil.copy2(build / "bin" / target, staging / "bin" / target)
        for soname, library in _linked_libraries(staging / "bin" / TARGETS[0]):
            shutil.copy2(library, staging / "bin" / soname)
        seconds = round(time.monotonic() - started, 1)
        (staging / _STAMP).write_text(
            json.dumps(
                {
                    "sdist": SDIST_NAME,
                    "sdist_sha256": SDIST_SHA256,
                    "flags": list(CMAKE_FLAGS),
                    "targets": list(TARGETS),
                    "build_seconds": seconds,
                },
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(root, ignore_errors=True)
        staging.replace(root)
    say(f"engine: built in {seconds:.0f} s -> {root / 'bin'}")
    return Engine(root, key)


def main(argv: list[str] | None = None) -> int:
    del argv
    try:
        engine = ensure_engine()
    except EngineBuildError as err:
        print(f"engine: {err}", file=sys.stderr)
        return 1
    print(engine.bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
