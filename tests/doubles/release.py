"""Build the Ollama TEST DOUBLE's release tree and model registry for the local mirror.

Layout written under a mirror root (what tests/doubles/mirror.py serves):

    <root>/download/v<version>/ollama-linux-amd64.tar.zst     # bin/ollama + lib/ollama/...
    <root>/download/v<version>/sha256sum.txt                   # "<hex>  ./<asset>" lines
    <root>/registry/manifests/<namespace>/<model>/<tag>         # Docker v2 manifest (JSON)
    <root>/registry/blobs/sha256:<hex>                          # layers and config

The tarball has the shape of the real release (`.github/workflows/release.yaml`): entries
`bin/ollama` and `lib/ollama/...`, owned by root, extracted by the role into /usr/local.
The real amd64 bundle is big (CUDA and Vulkan libraries: up to 2 GiB packed, ~4.25 GiB
unpacked); `build_release(padding_bytes=N)` gives the double's release that weight with one
honestly named file of padding, so disk-space handling sees real bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

DOUBLE_SOURCE = Path(__file__).resolve().parent / "ollama_double" / "ollama.py"
DEFAULT_VERSION = "0.32.15"  # the version the role pins (newest non-rc tag in ollama.md)
DEFAULT_MODEL_BYTES = 128 << 20  # scaled-down gemma2:2b "weights" (real: 1,629,509,152 bytes)
TARBALL_MTIME = 1_767_225_600  # fixed so two builds of one version are byte-identical
# The padding's file, where the real bundle keeps its GPU libraries; nothing loads it.
PADDING_NAME = "lib/ollama/PADDING-stands-in-for-the-gpu-libraries.bin"
# Share of the padding that is incompressible (seeded random; the rest zeros): the tarball
# comes out ~0.4 x the unpacked size, as the real bundle's (1.7 GB packed for ~4.25 GiB).
PADDING_RANDOM_SHARE = 0.4
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

DOUBLE_NOTE = b"""This is the labctl Ollama TEST DOUBLE, not Ollama.
bin/ollama is a stdlib-only Python stand-in (see its docstring); llama-server is its runner.
"""
REAL_ENGINE_NOTE = b"""lib/ollama/llama-server is the REAL upstream llama.cpp server, built from
the llama.cpp tree vendored in PyPI's llama-cpp-python 0.3.36 sdist (CPU only), as Ollama >= 0.30
ships it.
"""


@dataclass(frozen=True)
class Release:
    """A built release-shaped tarball of the double."""

    version: str
    tarball: Path
    sha256: str
    checksum_file: Path
    unpacked_bytes: int = 0  # what the files take once unpacked (sum of their sizes)

    def url(self, base_url: str) -> str:
        """The tarball URL under a mirror base such as http://10.213.30.1:8080/download."""
        return f"{base_url.rstrip('/')}/v{self.version}/{self.tarball.name}"


@dataclass(frozen=True)
class PublishedModel:
    """A model published in the mirror's registry."""

    name: str  # e.g. "gemma2:2b"
    manifest_digest: str  # hex sha256 of the manifest = /api/tags "digest"
    model_digest: str  # "sha256:<hex>" of the weights layer
    model_bytes: int
    total_bytes: int  # /api/tags "size": layers + config


def double_script(version: str) -> bytes:
    """The double's source with its version baked in (what `ollama -v` reports)."""
    source = DOUBLE_SOURCE.read_text()
    marker = 'VERSION = "0.0.0-double"'
    if marker not in source:
        raise RuntimeError(f"version marker not found in {DOUBLE_SOURCE}")
    return source.replace(marker, f'VERSION = "{version}"', 1).encode()


class _Padding(io.RawIOBase):
    """padding_bytes of seeded random bytes, then zeros, read in chunks (never all in memory)."""

    def __init__(self, size: int) -> None:
        self._left, self._random = size, int(size * PADDING_RANDOM_SHARE)
        self._rng = random.Random(f"padding:{size}")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left, 1 << 20)
        done = 0
        if self._random > 0:
            take = min(count, self._random)
            buffer[:take] = self._rng.randbytes(take)
            self._random -= take
            done = take
        buffer[done:count] = bytes(count - done)
        self._left -= count
        return count


def _write_tar(
    out: IO[bytes], version: str, llama_server: Path | None, padding_bytes: int = 0
) -> int:
    """bin/ollama + lib/ollama/llama-server (the real binary when given, else the hashing
    one) + padding_bytes of padding, streamed to out; returns the files' total size."""
    script = double_script(version)
    runner = llama_server.read_bytes() if llama_server else script
    note = DOUBLE_NOTE + (REAL_ENGINE_NOTE if llama_server else b"")
    entries: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("bin/ollama", script, 0o755),
        ("lib", None, 0o755),
        ("lib/ollama", None, 0o755),
        ("lib/ollama/llama-server", runner, 0o755),
        ("lib/ollama/DOUBLE-NOT-OLLAMA.txt", note, 0o644),
    ]
    # the shared libraries built beside it (libgomp), where Ollama's bundle keeps its libraries
    for library in sorted(llama_server.parent.glob("*.so*")) if llama_server else []:
        entries.append((f"lib/ollama/{library.name}", library.read_bytes(), 0o755))
    total = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in entries:
            info = _tar_info(name, mode)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                total += info.size
        if padding_bytes:
            info = _tar_info(PADDING_NAME, 0o644)
            info.size = padding_bytes
            tar.addfile(info, io.BufferedReader(_Padding(padding_bytes)))
            total += padding_bytes
    return total


def _tar_info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, TARBALL_MTIME, 0, 0
    info.uname = info.gname = "root"
    return info


def build_release(
    root: Path,
    version: str = DEFAULT_VERSION,
    arch: str = "amd64",
    llama_server: Path | None = None,
    padding_bytes: int = 0,
) -> Release:
    """Write the release tarball and its sha256sum.txt under <root>/download/v<version>/.

    llama_server: the real llama.cpp server binary to ship as lib/ollama/llama-server (what
    measures); None ships the double's hashing runner there (fast unit tests only).
    padding_bytes: add a file of that size (PADDING_NAME) for the real bundle's weight:
    4_563_402_752 is what the real amd64 bundle unpacks to; tests use scaled-down sizes.
    """
    release_dir = root / "download" / f"v{version}"
    release_dir.mkdir(parents=True, exist_ok=True)
    tarball = release_dir / f"ollama-linux-{arch}.tar.zst"
    partial = tarball.with_name(tarball.name + ".partial")
    with partial.open("wb") as out:
        zstd = subprocess.Popen(["zstd", "-q", "-c", "-3"], stdin=subprocess.PIPE, stdout=out)
        assert zstd.stdin is not None
        try:
            unpacked = _write_tar(zstd.stdin, version, llama_server, padding_bytes)
        finally:
            zstd.stdin.close()
        if zstd.wait() != 0:
            raise subprocess.CalledProcessError(zstd.returncode, "zstd")
    partial.replace(tarball)
    hasher = hashlib.sha256()
    with tarball.open("rb") as packed:
        while chunk := packed.read(8 << 20):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    checksum_file = release_dir / "sha256sum.txt"
    # The real file lists every asset with a "./" prefix (find . | xargs sha256sum).
    lines = [f"{digest}  ./{tarball.name}"]
    lines += [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.name}"
        for p in sorted(release_dir.iterdir())
        if p.is_file() and p.name not in (tarball.name, checksum_file.name)
    ]
    checksum_file.write_text("\n".join(lines) + "\n")
    return Release(version, tarball, digest, checksum_file, unpacked)


def _write_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _write_weights(blobs: Path, size: int, seed: str) -> dict[str, object]:
    """Deterministic pseudo-random weights, streamed to disk (sizes up to a few hundred MiB)."""
    rng = random.Random(seed)
    hasher = hashlib.sha256()
    tmp = blobs / f"tmp-{hashlib.sha256(seed.encode()).hexdigest()[:16]}"
    with tmp.open("wb") as out:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    digest = "sha256:" + hasher.hexdigest()
    tmp.replace(blobs / digest)
    return {"digest": digest, "size": size}


def _link_weights(blobs: Path, gguf: Path) -> dict[str, object]:
    """A GGUF file as the weights layer: hashed, then hard-linked (or copied) into blobs/."""
    hasher = hashlib.sha256()
    with gguf.open("rb") as f:
        while chunk := f.read(8 << 20):
            hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()
    target = blobs / digest
    if not target.exists():
        tmp = blobs / f"tmp-{hasher.hexdigest()[:16]}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(gguf, tmp)
        except OSError:
            shutil.copyfile(gguf, tmp)
        tmp.replace(target)
    return {"digest": digest, "size": gguf.stat().st_size}


# gemma2:2b's template layer (358 B in the real manifest, ollama.md)
GEMMA2_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"
    "<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n"
)


def publish_model(
    root: Path,
    name: str = "gemma2:2b",
    model_bytes: int = DEFAULT_MODEL_BYTES,
    *,
    gguf: Path | None = None,
    family: str = "gemma2",
    parameter_size: str = "2.6B",
    quantization: str = "Q4_0",
    chat_template: str = GEMMA2_TEMPLATE,
) -> PublishedModel:
    """Put a model into the mirror's registry with the real gemma2 layer set.

    gguf: a real GGUF file as the weights (what the real llama-server runs); without it the
    weights are model_bytes of seeded random bytes for the double's hashing runner.
    """
    model, _, tag = name.partition(":")
    namespace, _, model = model.rpartition("/")
    namespace, tag = namespace or "library", tag or "latest"
    registry = root / "registry"
    blobs = registry / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if gguf is not None:
        weights = _link_weights(blobs, gguf)
        model_bytes = int(weights["size"])  # type: ignore[call-overload]
    else:
        weights = _write_weights(blobs, model_bytes, f"{namespace}/{model}:{tag}:{model_bytes}")
    template = _write_blob(blobs, chat_template.encode())
    license_ = _write_blob(blobs, b"Gemma Terms of Use (placeholder text for the test double)\n")
    params = _write_blob(
        blobs,
        json.dumps({"stop": ["<start_of_turn>", "<end_of_turn>"]}, separators=(",", ":")).encode(),
    )
    config = _write_blob(
        blobs,
        json.dumps(
            {
                "model_format": "gguf",
                "model_family": family,
                "model_families": [family],
                "model_type": parameter_size,
                "file_type": quantization,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [
                        weights["digest"],
                        template["digest"],
                        license_["digest"],
                        params["digest"],
                    ],
                },
            },
            separators=(",", ":"),
        ).encode(),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", **weights},
            {"mediaType": "application/vnd.ollama.image.template", **template},
            {"mediaType": "application/vnd.ollama.image.license", **license_},
            {"mediaType": "application/vnd.ollama.image.params", **params},
        ],
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    target = registry / "manifests" / namespace / model / tag
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    sizes = [int(x["size"]) for x in (weights, template, license_, params, config)]  # type: ignore[call-overload]
    return PublishedModel(
        name=name if ":" in name else f"{name}:latest",
        manifest_digest=hashlib.sha256(raw).hexdigest(),
        model_digest=str(weights["digest"]),
        model_bytes=model_bytes,
        total_bytes=sum(sizes),
    )
