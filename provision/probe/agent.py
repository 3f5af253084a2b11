"""labctl probe agent: runs INSIDE the guest with its own python3 (stdlib only, Python >= 3.10:
zip(strict=...); labctl checks the version in the guest before sending this file).

labctl sends this file over SSH (`python3 - <options>`); it talks to Ollama on the guest's
loopback, so no SSH latency enters the timings, and writes one JSON object per line to
stdout, flushed at once, so the host sees every event as it happens:

  {"event": "hello", ...}            agent and python version
  {"event": "facts", ...}            vCPUs, CPU model and flags, kernel, memory, Ollama version,
                                     the model's /api/tags entry (raw)
  {"event": "run_start", "run": i}   a run begins
  {"event": "sample", "run": i, ...} the VM's state, >= 5 times a second during each run
  {"event": "run", "run": i, ...}    Ollama's own fields (raw), TTFT, sampler cost, failure
  {"event": "ps", "entry": {...}}    the model's /api/ps entry (raw) after the first good run
  {"event": "error", "kind": ...}    a fatal problem (Ollama missing, model missing, OOM...)
  {"event": "end", ...}              the agent is done

Interpretation (rates, statistics, verdicts shown to users) happens on the host, in
provision/probe/parse.py; this file only measures and reports raw values.

It is one file on purpose, over the ~400-line budget: it is piped to the guest's python3 as a
single script with nothing of labctl installed there, so it cannot import sibling modules.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

AGENT_PROTOCOL = 1
# comm / argv names of Ollama's server and its runners, old and new (ollama.md §0, §7.4)
OLLAMA_NAMES = frozenset({"ollama", "llama-server", "ollama_llama_server", "ollama_llama_se"})
PYTHONS = re.compile(r"^python[0-9.]*$")
FLAGS_OF_INTEREST = ("avx", "avx2", "avx512f", "fma", "f16c", "avx_vnni", "avx512_vnni")
OOM_LINE = re.compile(r"(out of memory|oom-kill|oom_reaper|killed process)", re.IGNORECASE)
KILLED_PROCESS = re.compile(r"Killed process (\d+) \(([^)]*)\)")
# Ollama's own words for a memory failure: 0.32.15's llm/status.go:81-92 (outOfMemorySubstrings,
# llm/llama_server.go:1372 "llama-server reported out-of-memory during startup") and the older
# "model requires more system memory" (<= 0.12). Strong evidence on their own.
MEMORY_TEXT = re.compile(
    r"(out of memory|out-of-memory|requires more system memory|failed to allocate|"
    r"allocation failed|not enough memory|insufficient memory|cannot allocate|\boom\b)",
    re.IGNORECASE,
)
# Ollama 0.32.15's words for a runner that died (killed at load, or the stream broke: llm/
# llama_server.go:1300-1325, 1642, 1766): the runner is gone, memory must be shown separately.
RUNNER_DIED_TEXT = re.compile(
    r"(signal: killed|model runner has unexpectedly stopped|an error was encountered while "
    r"running the model|llama-server process has terminated|llama runner process has "
    r"terminated)",
    re.IGNORECASE,
)
SAMPLER_BUDGET = 0.005  # the sampler's own CPU, as a fraction of one core: half the 1 % limit
MAX_INTERVAL_S = 0.2  # 5 Hz, the slowest sampling allowed
AT_LIMIT_FRACTION = 0.10  # MemAvailable below 10 % of MemTotal = memory at the limit


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed: the host reads events as they come."""
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Fatal(Exception):
    """A problem that ends the probe; reported as one error event."""

    def __init__(self, kind: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


# --------------------------------------------------------------------------- /proc readers


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def read_bytes(path: str) -> bytes:
    # os.open/os.read: a third of the cost of open(); the sampler's budget is < 1 % of a core
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies for the whole machine (index 0) and each core (1..n)."""
    times = []
    for line in read_bytes("/proc/stat").split(b"\n"):
        if not line.startswith(b"cpu"):
            break
        values = [int(v) for v in line.split()[1:9]]  # guest time is already in user/nice
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values)
        times.append((total - idle, total))
    return times


_MEMINFO_KEYS = {
    b"MemTotal": "MemTotal",
    b"MemAvailable": "MemAvailable",
    b"SwapTotal": "SwapTotal",
    b"SwapFree": "SwapFree",
}


def read_meminfo() -> dict[str, int]:
    """The /proc/meminfo fields we use, in bytes."""
    found = {}
    for line in read_bytes("/proc/meminfo").split(b"\n"):
        key, _, rest = line.partition(b":")
        name = _MEMINFO_KEYS.get(key)
        if name is not None:
            found[name] = int(rest.split()[0]) * 1024
    return found


def read_load1() -> float:
    return float(read_bytes("/proc/loadavg").split()[0])


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def read_rss_bytes(pid: int) -> int | None:
    """Resident set size (what VmRSS shows) from /proc/PID/statm."""
    try:
        return int(read_bytes(f"/proc/{pid}/statm").split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def _process_names(pid: str) -> set[str]:
    """comm, argv[0] and (for interpreters) argv[1] basenames of a process."""
    names = set()
    try:
        names.add(read_text(f"/proc/{pid}/comm").strip())
        argv = read_text(f"/proc/{pid}/cmdline").split("\0")
    except OSError:
        return names
    if argv and argv[0]:
        first = os.path.basename(argv[0])
        names.add(first)
        if PYTHONS.match(first) and len(argv) > 1:
            names.add(os.path.basename(argv[1]))
    return names


def find_ollama_servers() -> set[int]:
    """PIDs of Ollama servers: processes named like Ollama whose parent is not one (one scan)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _process_names(entry) & OLLAMA_NAMES:
            found.add(int(entry))
    return {pid for pid in found if _parent_of(pid) not in found}


def _parent_of(pid: int) -> int | None:
    try:
        # the field after the parenthesised comm (which may itself hold spaces or parens)
        return int(read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> set[int]:
    """Direct children of every thread of pid (runners are started from server threads)."""
    kids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            text = read_text(f"/proc/{pid}/task/{tid}/children")
        except OSError:
            continue
        kids.update(int(p) for p in text.split())
    return kids


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on a TCP port (state 0A in /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = read_text(table).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                found.add(fields[9])
    return found


def holding_socket(pids: set[int], inodes: set[str]) -> set[int]:
    """The pids (of those we may inspect) that hold one of the socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                holders.add(pid)
        except OSError:
            continue  # another user's process: not ours to inspect
    return holders


class OllamaProcesses:
    """The server and all its descendants (the runners), found once, followed cheaply."""

    REFRESH_EVERY = 3  # samples between walks of the process tree (a runner lives for seconds)

    def __init__(self, port: int) -> None:
        self.port = port
        self.roots = self.find_roots()
        self.seen: set[int] = set(self.roots)
        self.members: set[int] = set(self.roots)
        self.calls = 0

    def current(self) -> set[int]:
        alive = {p for p in self.roots if os.path.exists(f"/proc/{p}")}
        if not alive:
            alive = self.find_roots()
        self.roots = alive
        members, frontier = set(alive), list(alive)
        while frontier:
            for child in children_of(frontier.pop()):
                if child not in members:
                    members.add(child)
                    frontier.append(child)
        self.seen |= members
        self.members = members
        return members

    def find_roots(self) -> set[int]:
        """Ollama servers; when there are several, the one listening on our port if we can tell.

        Another user's process (the `ollama` service user) cannot be inspected, and then all
        servers found are kept.
        """
        servers = find_ollama_servers()
        if len(servers) > 1:
            ours = holding_socket(servers, listening_inodes(self.port))
            if ours:
                return ours
        return servers

    def rss_bytes(self) -> tuple[int | None, set[int]]:
        """Summed RSS of server and runners; the tree is re-walked every few calls."""
        self.calls += 1
        members = self.current() if self.calls % self.REFRESH_EVERY == 1 else self.members
        values = [read_rss_bytes(p) for p in members]
        known = [v for v in values if v is not None]
        return (sum(known) if known else None), members


# --------------------------------------------------------------------------- sampler


class Sampler(threading.Thread):
    """Samples the VM at a fixed rate during one run and measures its own CPU cost."""

    def __init__(
        self, run: int, interval_s: float, processes: OllamaProcesses, *, quiet: bool = False
    ) -> None:
        super().__init__(name="labctl-sampler", daemon=True)
        self.run_index = run
        self.quiet = quiet  # watch memory and runners without emitting samples (a load)
        self.interval_s = interval_s
        self.processes = processes
        self.stopping = threading.Event()
        self.samples = 0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.min_available: int | None = None
        self.mem_total: int | None = None
        self.swap_peak = 0
        self.swap_total = 0
        self.runner_pids: set[int] = set()
        self.error: str | None = None

    def run(self) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        try:
            previous = read_cpu_times()
            next_at = wall0
            while True:
                next_at += self.interval_s
                stopped = self.stopping.wait(max(0.0, next_at - time.monotonic()))
                now = time.monotonic()
                # Also sample when the run ends, so even a run shorter than one interval
                # has its memory and load recorded.
                previous = self.sample(previous, now - wall0)
                if stopped:
                    break
                self._keep_to_budget(time.thread_time() - cpu0, now - wall0)
        except BrokenPipeError:
            pass  # the host went away; the main thread notices on its next write
        except (OSError, ValueError, IndexError) as error:
            self.error = f"sampling stopped: {type(error).__name__}: {error}"
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self.wall_s = time.monotonic() - wall0

    def _keep_to_budget(self, cpu_s: float, wall_s: float) -> None:
        """Sample less often (never below 5 Hz) when sampling costs more than its budget.

        /proc/stat and /proc/meminfo cost far more CPU on a busy machine than on an idle one.
        """
        if wall_s > 1.0 and cpu_s > SAMPLER_BUDGET * wall_s:
            self.interval_s = min(MAX_INTERVAL_S, self.interval_s * 1.25)

    def sample(self, previous: list[tuple[int, int]], t: float) -> list[tuple[int, int]]:
        now = read_cpu_times()
        utils = [_util(old, new) for old, new in zip(previous, now, strict=False)]
        mem = read_meminfo()
        rss, members = self.processes.rss_bytes()
        self.runner_pids |= members - self.processes.roots
        swap_used = mem.get("SwapTotal", 0) - mem.get("SwapFree", 0)
        available = mem.get("MemAvailable")
        if available is not None:
            self.min_available = (
                available if self.min_available is None else min(self.min_available, available)
            )
        self.mem_total = mem.get("MemTotal")
        self.swap_total = mem.get("SwapTotal", 0)
        self.swap_peak = max(self.swap_peak, swap_used)
        self.samples += 1
        if self.quiet:
            return now
        emit(
            "sample",
            run=self.run_index,
            t=round(t, 3),
            load1=read_load1(),
            cpu_pct=utils[0] if utils else None,
            busiest_core_pct=max((u for u in utils[1:] if u is not None), default=None),
            mem_total=self.mem_total,
            mem_available=available,
            swap_used=swap_used,
            ollama_rss=rss,
            ollama_pids=len(members),
        )
        return now

    def memory_at_limit(self) -> bool:
        if (
            self.min_available is not None
            and self.mem_total
            and self.min_available <= AT_LIMIT_FRACTION * self.mem_total
        ):
            return True
        return bool(self.swap_total) and self.swap_peak >= 0.9 * self.swap_total


def _util(old: tuple[int, int], new: tuple[int, int]) -> float | None:
    busy, total = new[0] - old[0], new[1] - old[1]
    return round(100.0 * busy / total, 1) if total > 0 else None


# --------------------------------------------------------------------------- facts


def cpu_topology(cpuinfo: str) -> dict[str, Any]:
    """Sockets, cores and threads per core as /proc/cpuinfo shows them to this guest.

    A core is a distinct (physical id, core id) pair; a guest kernel without those fields
    (some hypervisors, containers) counts each processor as one core of one socket.
    """
    processors, sockets, cores = 0, set(), set()
    physical, core = "0", None
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
            physical, core = "0", None
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key and processors:
            sockets.add(physical)
            cores.add((physical, core if core is not None else f"cpu{processors}"))
    return {
        "processors": processors,
        "sockets": len(sockets) or None,
        "cores": len(cores) or None,
        "threads_per_core": (processors // len(cores)) if cores else None,
    }


def cpu_facts() -> dict[str, Any]:
    model: str | None = None
    flags: set[str] = set()
    topology: dict[str, Any] = {}
    try:
        cpuinfo = read_text("/proc/cpuinfo")
        topology = cpu_topology(cpuinfo)
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        vcpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        vcpus = os.cpu_count() or 0
    return {
        "vcpus": vcpus,
        "cpu_model": model,
        "flags": {f: f in flags for f in FLAGS_OF_INTEREST} if flags else None,
        "topology": topology,
        "online_cpus": os.cpu_count(),
    }


def host_facts() -> dict[str, Any]:
    mem = read_meminfo()
    uname = os.uname()
    facts = cpu_facts()
    facts.update(
        kernel=uname.release,
        machine=uname.machine,
        hostname=uname.nodename,
        mem_total=mem.get("MemTotal"),
        swap_total=mem.get("SwapTotal"),
        python=".".join(str(v) for v in sys.version_info[:3]),
    )
    return facts


# --------------------------------------------------------------------------- Ollama API


class Ollama:
    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 11434
        self.url = url
        self.timeout_s = timeout_s

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str) -> tuple[int, Any]:
        return self._json("GET", path, None, timeout=30.0)

    def post(self, path: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, Any]:
        return self._json("POST", path, body, timeout=timeout)

    def _json(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, Any]:
        conn = self.connection(timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw.decode("utf-8", "replace") or "null")
        except ValueError:
            return response.status, {"error": raw.decode("utf-8", "replace").strip()[:300]}


def ollama_binary() -> str | None:
    found = shutil.which("ollama")
    if found:
        return found
    for candidate in ("/usr/local/bin/ollama", "/usr/bin/ollama", "/bin/ollama"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def check_ollama(api: Ollama) -> dict[str, Any]:
    """/api/version, or a Fatal saying whether Ollama is missing or just not running."""
    try:
        status, body = api.get("/api/version")
    except OSError as error:
        binary = ollama_binary()
        if binary is None:
            raise Fatal(
                "ollama_not_installed", "no `ollama` on PATH, in /usr/local/bin or in /usr/bin"
            ) from None
        raise Fatal(
            "ollama_not_running",
            f"{binary} is installed but its API at {api.url} does not answer ({error})",
        ) from None
    if status != 200 or not isinstance(body, dict):
        raise Fatal(
            "ollama_not_running", f"its API at {api.url} answered HTTP {status} to /api/version"
        )
    return body


def normalise_model(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def find_tags_entry(api: Ollama, model: str) -> dict[str, Any]:
    status, body = api.get("/api/tags")
    if status != 200 or not isinstance(body, dict):
        raise Fatal("ollama_error", f"Ollama's /api/tags answered HTTP {status}")
    wanted = normalise_model(model)
    for entry in body.get("models") or []:
        if normalise_model(str(entry.get("name") or entry.get("model") or "")) == wanted:
            return dict(entry)
    names = ", ".join(str(e.get("name")) for e in body.get("models") or []) or "none"
    raise Fatal("model_missing", f"models there: {names}", model=model)


def ps_entry(api: Ollama, model: str) -> dict[str, Any] | None:
    try:
        status, body = api.get("/api/ps")
    except OSError:
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    wanted = normalise_model(model)
    for entry in body.get("models") or []:
        if normalise_model(str(entry.get("name") or entry.get("model") or "")) == wanted:
            return dict(entry)
    return None


def unload(api: Ollama, model: str) -> None:
    """keep_alive 0 with no prompt unloads; wait until /api/ps no longer lists the model."""
    api.post("/api/generate", {"model": model, "keep_alive": 0})
    deadline = time.monotonic() + 30
    while ps_entry(api, model) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def chat_template(api: Ollama, model: str) -> str | None:
    """The model's Go template from /api/show, or None when the nonce cannot go in front.

    Models rendered by a built-in renderer (show's `renderer`) bypass it when a request carries
    a template (server/routes.go:556 in v0.32.15), so they keep the nonce inside the prompt.
    """
    try:
        status, body = api.post("/api/show", {"model": model})
    except OSError:
        return None
    if status != 200 or not isinstance(body, dict) or body.get("renderer"):
        return None
    template = body.get("template")
    return template if isinstance(template, str) and "{{" in template else None


def nonce_prompt(options: dict[str, Any], nonce: str) -> dict[str, Any]:
    """The prompt fields of one run, with a per-run nonce that no cached prefix can match.

    Ollama 0.32 sends cache_prompt and reports prompt_eval_count = cache_n + prompt_n while
    prompt_eval_duration covers prompt_n only (llm/llama_server.go:1504-1513, 1562), so any
    reused prefix inflates prompt tok/s. The nonce goes before the template's first token
    (only the BOS the tokenizer adds is shared); without a template it leads the prompt.
    """
    template = options.get("chat_template")
    if template:
        return {"prompt": options["prompt"], "template": f"{nonce}\n{template}"}
    return {"prompt": "[run {}]\n{}".format(nonce, options["prompt"])}


def cache_bust(options: dict[str, Any]) -> str:
    """How the run kept cached tokens out of prompt tok/s, as reported with each run."""
    where = "nonce-first" if options.get("chat_template") else "nonce-in-prompt"
    return f"unload+{where}" if options.get("cold") else where


# --------------------------------------------------------------------------- one run


METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "done_reason",
    "done",
)


class RunOutcome:
    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.error: str | None = None
        self.http_status: int | None = None
        self.ttft_s: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.chunks = 0
        self.token_times: list[float] = []  # perf_counter of each token chunk, in the guest
        self.sent_at: float | None = None


def stream_generate(
    api: Ollama,
    request: dict[str, Any],
    timeout_s: float,
    gate: threading.Barrier | None = None,
) -> RunOutcome:
    """POST a streamed /api/generate and time the first token ourselves.

    With a gate, the request is sent when every stream of a concurrency level is ready.
    """
    outcome = RunOutcome()
    conn = api.connection(timeout_s)
    if gate is not None:
        gate.wait()
    started = time.perf_counter()
    outcome.sent_at = started
    try:
        conn.request(
            "POST",
            "/api/generate",
            body=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        outcome.http_status = response.status
        if response.status != 200:
            raw = response.read().decode("utf-8", "replace")
            try:
                outcome.error = str(json.loads(raw).get("error") or raw)
            except (ValueError, AttributeError):
                outcome.error = raw.strip()[:300] or f"HTTP {response.status}"
            return outcome
        _read_stream(response, outcome, started)
    except (OSError, http.client.HTTPException) as error:
        outcome.error = "connection to Ollama failed during the run: %s" % (
            error or type(error).__name__
        )
    finally:
        conn.close()
    if outcome.final is None and outcome.error is None:
        outcome.error = "Ollama's stream ended without a final (done) object"
    return outcome


def _read_stream(response: http.client.HTTPResponse, outcome: RunOutcome, started: float) -> None:
    while True:
        line = response.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        now = time.perf_counter()
        try:
            chunk = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if "error" in chunk:  # an error line inside a 200 stream (ollama.md §3.8)
            outcome.error = str(chunk["error"])
            return
        if chunk.get("response"):
            outcome.chunks += 1
            outcome.token_times.append(now)
            if outcome.ttft_s is None:
                outcome.ttft_s = now - started
                outcome.first_token_at = now
            outcome.last_token_at = now
        if chunk.get("done"):
            outcome.final = {k: chunk[k] for k in METRIC_KEYS if k in chunk}
            return


def kernel_oom_lines(since_epoch: float) -> list[str]:
    """Kernel log lines about OOM kills since the run started (dmesg, else the journal)."""
    lines = _dmesg_since(since_epoch)
    if lines is None:
        lines = _journal_kernel_since(since_epoch) or []
    return [line.strip() for line in lines if OOM_LINE.search(line)]


def names_ollama_process(line: str, pids: set[int]) -> bool:
    killed = KILLED_PROCESS.search(line)
    if killed is None:
        return False
    return int(killed.group(1)) in pids or killed.group(2) in OLLAMA_NAMES


OOM_COUNTERS = (
    ("/proc/vmstat", "oom_kill "),  # every OOM kill on this kernel, global or cgroup (>= 4.13)
    ("/sys/fs/cgroup/memory.events", "oom_kill "),  # our cgroup (v2; a container's own root)
    ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill "),  # our cgroup (v1)
)


def oom_kill_counts() -> dict[str, int]:
    """The kernel's OOM-kill counters we can read: readable by any user, unlike dmesg."""
    counts = {}
    for path, key in OOM_COUNTERS:
        try:
            for line in read_text(path).splitlines():
                if line.startswith(key):
                    counts[path] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return counts


def _run_quiet(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def _dmesg_since(since_epoch: float) -> list[str] | None:
    text = _run_quiet(["dmesg"]) or _run_quiet(["sudo", "-n", "dmesg"])
    if text is None:
        return None
    try:
        booted = time.time() - float(read_text("/proc/uptime").split()[0])
    except (OSError, ValueError):
        return text.splitlines()
    since_boot = since_epoch - booted - 2.0
    kept = []
    for line in text.splitlines():
        match = re.match(r"^\[\s*(\d+\.\d+)\]", line)
        if match is None or float(match.group(1)) >= since_boot:
            kept.append(line)
    return kept


def _journal_kernel_since(since_epoch: float) -> list[str] | None:
    text = _run_quiet(
        ["journalctl", "-k", "-q", "--no-pager", "--since", f"@{int(since_epoch - 2)}"]
    )
    return text.splitlines() if text is not None else None


def oom_verdict(
    error: str,
    sampler: Sampler,
    processes: OllamaProcesses,
    started_epoch: float,
    counts_before: dict[str, int],
) -> dict[str, Any]:
    """Was the runner killed for lack of memory? Evidence from independent places.

    Strong on its own: a kernel log line naming an Ollama process, or Ollama's own error
    saying memory. Otherwise the runner must have been killed (SIGKILL in Ollama's error, or
    its pid gone) AND something must point at memory: the kernel's OOM-kill counter rose, any
    OOM line in the kernel log, or MemAvailable near zero in our samples.
    """
    evidence = []
    kernel = kernel_oom_lines(started_epoch)
    named = [line for line in kernel if names_ollama_process(line, processes.seen)]
    text_says = bool(MEMORY_TEXT.search(error))
    if text_says:
        evidence.append("ollama: " + error)
    vanished = sorted(p for p in sampler.runner_pids if not os.path.exists(f"/proc/{p}"))
    killed = bool(RUNNER_DIED_TEXT.search(error)) or bool(vanished)
    counts_after = oom_kill_counts()
    rose = {
        path: counts_after[path] - before
        for path, before in counts_before.items()
        if counts_after.get(path, before) > before
    }
    at_limit = sampler.memory_at_limit()
    evidence += ["kernel: " + line for line in (named or kernel)[-2:]]
    if killed:
        what = (
            f"runner pid {vanished} vanished"
            if vanished
            else "runner was SIGKILLed"
            if "signal: killed" in error
            else "runner died"
        )
        if rose:
            evidence.append(
                f"{what}; the kernel counted {max(rose.values())} OOM kill(s) "
                f"in {', '.join(sorted(rose))}"
            )
        if at_limit:
            evidence.append(
                f"{what} while MemAvailable fell to {sampler.min_available} "
                f"of {sampler.mem_total} bytes"
            )
    likely = bool(named) or text_says or (killed and bool(rose or kernel or at_limit))
    return {
        "likely": likely,
        "evidence": evidence if likely else [],
        "runner_vanished": vanished,
        "memory_at_limit": at_limit,
        "oom_kills_counted": rose,
    }


def one_run(
    api: Ollama, options: dict[str, Any], index: int, warmup: bool, processes: OllamaProcesses
) -> bool:
    """Measure one generate; emit its samples and result. False when the probe must stop."""
    model = options["model"]
    if options.get("cold") and not warmup:
        unload(api, model)
    loaded_before = ps_entry(api, model) is not None
    nonce = uuid.uuid4().hex[:12]
    request = {
        "model": model,
        **nonce_prompt(options, nonce),
        "stream": True,
        "keep_alive": options.get("keep_alive", "10m"),
        "options": runner_options(options),
    }
    emit(
        "run_start",
        run=index,
        warmup=warmup,
        nonce=nonce,
        loaded_before=loaded_before,
        started_at=time.time(),
    )
    before_members = processes.current()
    sampler = Sampler(index, options.get("sample_interval_s", 0.1), processes)
    oom_counts = oom_kill_counts()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started_epoch, wall0 = time.time(), time.monotonic()
    sampler.start()
    outcome = stream_generate(api, request, float(options.get("run_timeout_s", 900)))
    sampler.stopping.set()
    sampler.join()
    wall_s = time.monotonic() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    new_runner = bool(sampler.runner_pids - before_members)
    result: dict[str, Any] = {
        "run": index,
        "warmup": warmup,
        "ok": outcome.error is None,
        "error": outcome.error,
        "http_status": outcome.http_status,
        "ollama": outcome.final or {},
        "ttft_s": _round(outcome.ttft_s),
        "wall_s": round(wall_s, 4),
        "stream_tokens": outcome.chunks,
        "stream_decode_s": _round(outcome.last_token_at - outcome.first_token_at)
        if outcome.first_token_at is not None and outcome.last_token_at is not None
        else None,
        "load_kind": "warm" if loaded_before and not new_runner else "cold",
        "nonce": nonce,
        "cache_bust": cache_bust(options),
        "started_at": started_epoch,
        "sampler": {
            "samples": sampler.samples,
            "interval_s": round(sampler.interval_s, 4),
            "cpu_s": round(sampler.cpu_s, 6),
            "wall_s": round(sampler.wall_s, 4),
            "error": sampler.error,
        },
        "agent_cpu_s": round(
            (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime), 6
        ),
    }
    if outcome.error is not None:
        result["oom"] = oom_verdict(outcome.error, sampler, processes, started_epoch, oom_counts)
    emit("run", **result)
    return outcome.error is None or not result["oom"]["likely"]


def runner_options(options: dict[str, Any]) -> dict[str, Any]:
    chosen = {
        "seed": int(options.get("seed", 42)),
        "temperature": 0,
        "num_predict": int(options["num_predict"]),
    }
    for key in ("num_thread", "num_ctx"):
        if options.get(key):
            chosen[key] = int(options[key])
    return chosen


def _round(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None


# --------------------------------------------------------------------------- concurrency levels


def runner_threads(processes: OllamaProcesses) -> list[dict[str, Any]]:
    """Each runner's thread count: its argv's -t/--threads (None: llama.cpp picks) and its
    task count in /proc/PID/task (which also counts llama-server's HTTP and helper threads)."""
    found = []
    for pid in sorted(processes.current() - processes.roots):
        try:
            argv = read_text(f"/proc/{pid}/cmdline").split("\0")
            tasks = len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
        threads = None
        for flag in ("-t", "--threads"):
            if flag in argv[:-1]:
                threads = int(argv[argv.index(flag) + 1])
        parallel = None
        for flag in ("-np", "--parallel"):
            if flag in argv[:-1]:
                parallel = int(argv[argv.index(flag) + 1])
        found.append(
            {
                "pid": pid,
                "name": os.path.basename(argv[0]) if argv else "",
                "argv_threads": threads,
                "argv_parallel": parallel,
                "tasks": tasks,
            }
        )
    return found


def server_num_parallel(roots: set[int]) -> int | None:
    """OLLAMA_NUM_PARALLEL of the running server (1 when unset, as envconfig.NumParallel's
    default); None when its environment is not ours to read (another user's process)."""
    for pid in sorted(roots):
        try:
            environ = read_bytes(f"/proc/{pid}/environ").split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"OLLAMA_NUM_PARALLEL="):
                try:
                    return max(1, int(entry.split(b"=", 1)[1].strip(b"\"' ") or b"1"))
                except ValueError:
                    return 1
        return 1
    return None


def load_runner(
    api: Ollama, options: dict[str, Any], processes: OllamaProcesses, index: int
) -> str:
    """Load the model with this thread count before measuring, and report the load apart.

    An empty prompt only schedules the model and is answered once it is loaded, with
    done_reason "load" and no durations (server/routes.go:475-483 in v0.32.15), so the load is
    timed here, in the guest. num_thread is a runner option: a new value restarts the runner.
    Then `warmup` single requests, not measured. Returns "ok", "failed" or "oom" (the runner
    was killed for memory while loading: the model does not fit, and the probe stops).
    """
    model = options["model"]
    sampler = Sampler(index, options.get("sample_interval_s", 0.1), processes, quiet=True)
    oom_counts = oom_kill_counts()
    started_epoch, wall0 = time.time(), time.monotonic()
    sampler.start()
    try:
        status, body = api.post(
            "/api/generate",
            {
                "model": model,
                "prompt": "",
                "keep_alive": options.get("keep_alive", "10m"),
                "options": runner_options(options),
            },
            timeout=float(options.get("run_timeout_s", 900)),
        )
    except OSError as failure:
        status, body = 0, {"error": f"connection to Ollama failed: {failure}"}
    sampler.stopping.set()
    sampler.join()
    load_wall_s = time.monotonic() - wall0
    ok = status == 200 and isinstance(body, dict) and not body.get("error")
    error = None if ok else str((body or {}).get("error") or f"HTTP {status}")
    oom = None
    if error is not None:
        oom = oom_verdict(error, sampler, processes, started_epoch, oom_counts)
    warmups = []
    if ok:
        for _ in range(int(options.get("warmup", 0))):
            request = level_request(options, uuid.uuid4().hex[:12])
            done = stream_generate(api, request, float(options.get("run_timeout_s", 900)))
            warmups.append(done.error is None)
    emit(
        "thread_load",
        index=index,
        num_thread=options.get("num_thread"),
        ok=ok,
        error=error,
        oom=oom,
        load_duration=(body or {}).get("load_duration") if ok else None,
        load_wall_s=round(load_wall_s, 4),
        wall_s=round(time.monotonic() - wall0, 4),
        warmups_ok=warmups,
        runners=runner_threads(processes),
    )
    if ok:
        return "ok"
    return "oom" if oom and oom["likely"] else "failed"


def level_request(options: dict[str, Any], nonce: str) -> dict[str, Any]:
    return {
        "model": options["model"],
        **nonce_prompt(options, nonce),
        "stream": True,
        "keep_alive": options.get("keep_alive", "10m"),
        "options": runner_options(options),
    }


def measure_level(
    api: Ollama,
    options: dict[str, Any],
    processes: OllamaProcesses,
    index: int,
    users: int,
    repeat: int,
) -> bool:
    """N simultaneous streams, each with its own nonce (no shared cached prefix); emit them.

    Every timestamp is taken here, in the guest, by the stream's own thread as each chunk
    arrives: no SSH latency enters TTFT or the inter-token gaps. False when a failed request's
    runner was killed for memory (the level's KV caches did not fit): the probe stops.
    """
    timeout = float(options.get("run_timeout_s", 900))
    gate = threading.Barrier(users)
    outcomes = [RunOutcome() for _ in range(users)]
    nonces = [uuid.uuid4().hex[:12] for _ in range(users)]

    def stream(slot: int) -> None:
        try:
            outcomes[slot] = stream_generate(
                api, level_request(options, nonces[slot]), timeout, gate
            )
        except Exception as error:  # noqa: BLE001 - one stream failing fails only itself
            outcomes[slot].error = f"{type(error).__name__}: {error}"

    sampler = Sampler(index, options.get("sample_interval_s", 0.1), processes)
    oom_counts = oom_kill_counts()
    started_epoch = time.time()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    sampler.start()
    streams = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(users)]
    for thread in streams:
        thread.start()
    for thread in streams:
        thread.join()
    sampler.stopping.set()
    sampler.join()
    wall_s = time.perf_counter() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    failed = next((o.error for o in outcomes if o.error is not None), None)
    oom = None
    if failed is not None:
        oom = oom_verdict(failed, sampler, processes, started_epoch, oom_counts)
    emit(
        "level",
        index=index,
        users=users,
        repeat=repeat,
        num_thread=options.get("num_thread"),
        wall_s=round(wall_s, 4),
        agent_cpu_s=round(
            (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime), 6
        ),
        sampler={
            "samples": sampler.samples,
            "interval_s": round(sampler.interval_s, 4),
            "cpu_s": round(sampler.cpu_s, 6),
            "wall_s": round(sampler.wall_s, 4),
            "error": sampler.error,
        },
        requests=[_request_event(o, n, wall0) for o, n in zip(outcomes, nonces, strict=True)],
        oom=oom,
    )
    return not (oom and oom["likely"])


def _request_event(outcome: RunOutcome, nonce: str, level_start: float) -> dict[str, Any]:
    times = outcome.token_times
    return {
        "ok": outcome.error is None,
        "error": outcome.error,
        "nonce": nonce,
        "sent_s": _round(outcome.sent_at - level_start) if outcome.sent_at else None,
        "ttft_s": _round(outcome.ttft_s),
        "tokens": outcome.chunks,
        "gaps_s": [round(b - a, 6) for a, b in itertools.pairwise(times)],
        "ollama": outcome.final or {},
    }


def probe_levels(api: Ollama, options: dict[str, Any], processes: OllamaProcesses) -> int:
    """For each thread count: load apart, then each concurrency level `runs` times; stop at
    the first OOM kill (the model, or this many users' KV caches, does not fit)."""
    index = 0
    threads_list = options.get("thread_counts") or [options.get("num_thread")]
    for load_index, threads in enumerate(threads_list):
        with_threads = dict(options, num_thread=threads)
        loaded = load_runner(api, with_threads, processes, load_index)
        if loaded == "oom":
            emit("end", runs=0, levels=index, stopped="oom")
            return 0
        if loaded == "failed":
            continue
        for users in options.get("concurrency") or [1]:
            for repeat in range(int(options["runs"])):
                fits = measure_level(api, with_threads, processes, index, int(users), repeat)
                index += 1
                if not fits:
                    emit("end", runs=0, levels=index, stopped="oom")
                    return 0
    emit("end", runs=0, levels=index, stopped=None)
    return 0


# --------------------------------------------------------------------------- main


def probe(options: dict[str, Any]) -> int:
    api = Ollama(
        options.get("ollama_url") or "http://127.0.0.1:11434",
        float(options.get("run_timeout_s", 900)),
    )
    facts = host_facts()
    version = check_ollama(api)
    facts["ollama_version"] = version.get("version")
    facts["tags_entry"] = find_tags_entry(api, options["model"])
    options["chat_template"] = chat_template(api, options["model"])
    facts["prompt_cache_bust"] = cache_bust(options)
    processes = OllamaProcesses(api.port)
    facts["ollama_pids"] = sorted(processes.current())
    facts["ollama_num_parallel"] = server_num_parallel(processes.roots)
    emit("facts", **facts)
    if options.get("concurrency") or len(options.get("thread_counts") or []) > 1:
        return probe_levels(api, options, processes)
    if options.get("cold"):
        unload(api, options["model"])
    total = int(options.get("warmup", 0)) + int(options["runs"])
    ps_sent = False
    for index in range(total):
        if not one_run(api, options, index, index < int(options.get("warmup", 0)), processes):
            emit("end", runs=index + 1, stopped="oom")
            return 0
        if not ps_sent:
            entry = ps_entry(api, options["model"])
            if entry is not None:
                emit("ps", entry=entry)
                ps_sent = True
    emit("end", runs=total, stopped=None)
    return 0


def decode_options(argv: list[str]) -> dict[str, Any]:
    if len(argv) != 2:
        raise Fatal("usage", "usage: agent.py BASE64-JSON-OPTIONS")
    options = json.loads(base64.b64decode(argv[1]).decode("utf-8"))
    if not isinstance(options, dict) or "model" not in options or "runs" not in options:
        raise Fatal("usage", "options must be a JSON object with model and runs")
    return options


def main(argv: list[str]) -> int:
    emit("hello", protocol=AGENT_PROTOCOL, python=sys.version.split()[0], pid=os.getpid())
    try:
        return probe(decode_options(argv))
    except Fatal as fatal:
        emit("error", kind=fatal.kind, message=fatal.message, **fatal.details)
        return 3
    except BrokenPipeError:
        return 4  # the host went away (SSH dropped): nobody left to tell
    except Exception as error:  # noqa: BLE001 - report any agent bug as one event
        emit("error", kind="agent_bug", message=f"{type(error).__name__}: {error}")
        return 5


if __name__ == "__main__":
    sys.exit(main(sys.argv))
