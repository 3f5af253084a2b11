"""What the guest is, as the probe agent reports it once per probe: CPU, memory, Ollama, model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from provision.probe.parse import count_of

AVX_FLAGS = ("avx", "avx2", "avx512f", "fma")


@dataclass(frozen=True)
class ModelFacts:
    """The model as /api/tags lists it."""

    name: str
    digest: str | None
    size_bytes: int | None
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None

    @classmethod
    def from_tags_entry(cls, entry: Mapping[str, Any]) -> ModelFacts:
        details = entry.get("details") or {}
        digest = entry.get("digest")
        return cls(
            name=str(entry.get("name") or entry.get("model") or ""),
            digest=str(digest).removeprefix("sha256:") if digest else None,
            size_bytes=count_of(entry, "size"),
            family=details.get("family") or None,
            parameter_size=details.get("parameter_size") or None,
            quantization=details.get("quantization_level") or None,
        )


def find_tags_entry(tags: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    """The /api/tags entry of a model; "gemma2" means "gemma2:latest", as in Ollama."""
    wanted = normalise_model(model)
    for entry in tags.get("models") or []:
        if normalise_model(str(entry.get("name") or entry.get("model") or "")) == wanted:
            return dict(entry)
    return None


def normalise_model(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True)
class PsFacts:
    """The loaded model as /api/ps shows it."""

    size_bytes: int | None
    size_vram_bytes: int | None
    context_length: int | None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> PsFacts:
        return cls(
            size_bytes=count_of(entry, "size"),
            size_vram_bytes=count_of(entry, "size_vram"),
            context_length=count_of(entry, "context_length"),
        )

    @property
    def on_cpu(self) -> bool | None:
        """True when the model runs 100 % on CPU (size_vram 0); None when not reported."""
        return None if self.size_vram_bytes is None else self.size_vram_bytes == 0

    @property
    def processor(self) -> str:
        """The PROCESSOR column of `ollama ps` (cmd/cmd.go, ollama.md §4.2)."""
        size, vram = self.size_bytes, self.size_vram_bytes
        if vram is None or size is None:
            return "not reported"
        if vram == 0:
            return "100% CPU"
        if vram == size:
            return "100% GPU"
        if vram > size or size == 0:
            return "Unknown"
        cpu = round((size - vram) / size * 100)
        return f"{cpu}%/{100 - cpu}% CPU/GPU"


@dataclass(frozen=True)
class CpuTopology:
    """Sockets, cores and threads per core as the guest's /proc/cpuinfo shows them."""

    processors: int | None
    sockets: int | None
    cores: int | None
    threads_per_core: int | None

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> CpuTopology:
        return cls(
            processors=count_of(data, "processors"),
            sockets=count_of(data, "sockets"),
            cores=count_of(data, "cores"),
            threads_per_core=count_of(data, "threads_per_core"),
        )

    @property
    def label(self) -> str:
        return (
            f"{self.sockets or '?'} socket(s), {self.cores or '?'} core(s), "
            f"{self.threads_per_core or '?'} thread(s) per core"
        )


@dataclass(frozen=True)
class GuestFacts:
    """What the guest is: reported once per probe by the agent."""

    vcpus: int | None
    cpu_model: str | None
    flags: dict[str, bool] | None
    kernel: str | None
    mem_total_bytes: int | None
    swap_total_bytes: int | None
    python: str | None
    ollama_version: str | None
    model: ModelFacts
    ps: PsFacts | None = None
    # how cached prompt tokens were kept out of prompt tok/s (agent.py cache_bust)
    prompt_cache_bust: str | None = None
    topology: CpuTopology | None = None
    online_cpus: int | None = None  # CPUs the guest kernel has online (sysconf)
    # the running server's OLLAMA_NUM_PARALLEL; None when its environment is not readable
    ollama_num_parallel: int | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> GuestFacts:
        flags = event.get("flags")
        return cls(
            vcpus=count_of(event, "vcpus"),
            cpu_model=event.get("cpu_model") or None,
            flags={str(k): bool(v) for k, v in flags.items()} if isinstance(flags, dict) else None,
            kernel=event.get("kernel") or None,
            mem_total_bytes=count_of(event, "mem_total"),
            swap_total_bytes=count_of(event, "swap_total"),
            python=event.get("python") or None,
            ollama_version=event.get("ollama_version") or None,
            model=ModelFacts.from_tags_entry(event.get("tags_entry") or {}),
            prompt_cache_bust=event.get("prompt_cache_bust") or None,
            topology=CpuTopology.from_event(event["topology"])
            if isinstance(event.get("topology"), dict) and event["topology"]
            else None,
            online_cpus=count_of(event, "online_cpus"),
            ollama_num_parallel=count_of(event, "ollama_num_parallel"),
        )

    def has_flag(self, flag: str) -> bool | None:
        return None if self.flags is None else self.flags.get(flag, False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["avx2"] = self.has_flag("avx2")
        data["on_cpu"] = self.ps.on_cpu if self.ps else None
        data["processor"] = self.ps.processor if self.ps else None
        return data


def avx_warning(facts: GuestFacts) -> str | None:
    """A warning when the guest CPU hides AVX2 (ollama.md §5.5), else None."""
    if facts.has_flag("avx2") is not False:
        return None
    missing = [f for f in AVX_FLAGS if facts.has_flag(f) is False]
    return (
        f"the guest CPU ({facts.cpu_model or 'unknown model'}) lacks {', '.join(missing)}: "
        "llama.cpp falls back to a much slower kernel. The Proxmox cpu type is the likely "
        "cause (kvm64 and x86-64-v2-AES hide AVX2); use cpu type host or x86-64-v3"
    )
