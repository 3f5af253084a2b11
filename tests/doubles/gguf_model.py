"""GGUF files shaped exactly like gemma2:2b (or smaller same-architecture models), for tests.

The real gemma2:2b weights cannot be downloaded where labctl's tests run. A real inference engine
(llama.cpp) does not care what the weights mean, only what shape and block format they have: a
file with gemma2:2b's architecture metadata, tensor names, shapes and quantization types costs the
engine the same compute and memory traffic per token as the real model. This module writes such
files with the `gguf` package (llama.cpp's own writer):

- `token_embd.weight` in Q6_K (tied output, no `output.weight`), the attention and feed-forward
  matrices in Q4_0, the norms in F32 (all ones);
- quantized blocks are seeded random bytes with their fp16 scale fields set small, so every
  activation stays finite and the engine never produces NaN (the text it generates is gibberish);
- a synthetic SPM ("llama") vocabulary: gemma's control tokens at gemma's ids, the 256 byte
  tokens, then generated pieces, compact enough that the full-size file is within a few KB of the
  real blob's size.

Files are deterministic (same spec, same bytes) and cached under
`$XDG_CACHE_HOME/labctl/models/<key>.gguf`.

    python -m tests.doubles.gguf_model [--spec gemma2-2b|tiny|small] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import gguf
import numpy as np

ARCH = "gemma2"
# bump when the bytes written for a given spec change (layout, random stream, vocabulary, keys)
FORMAT_VERSION = 2
REAL_GEMMA2_2B_BYTES = 1_629_509_152  # Ollama's gemma2:2b model blob

# gemma2 constants shared by every spec
RMS_EPS = 1e-6
ATTN_LOGIT_SOFTCAP = 50.0
FINAL_LOGIT_SOFTCAP = 30.0
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 106, 107
FIRST_BYTE_TOKEN = 108  # <0x00>..<0xFF> follow the control tokens
FIRST_PIECE = FIRST_BYTE_TOKEN + 256
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
DESCRIPTION = (
    "synthetic weights (seeded random quantized blocks), not a trained model: "
    "a gemma2-architecture test double"
)

Q4_0 = gguf.GGMLQuantizationType.Q4_0
Q6_K = gguf.GGMLQuantizationType.Q6_K
F32 = gguf.GGMLQuantizationType.F32
# Q4_0 block: fp16 d, then 16 bytes of nibbles (w = d * (q - 8)).
Q4_0_D = np.float16(0.02)
# Q6_K block: ql[128], qh[64], int8 scales[16], fp16 d (w = d * scale * (q - 32)).
Q6_K_SCALES = slice(192, 208)
Q6_K_D = np.float16(0.002)
CHUNK_BYTES = 8 << 20  # random bytes are drawn per chunk of whole rows: part of the format

# pieces are pseudo-words made of these syllables (bijective base-70 numbering: all unique)
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


@dataclass(frozen=True)
class ModelSpec:
    """A gemma2-architecture model: its mirror name, shape and the seed of its random weights."""

    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    context_length: int
    sliding_window: int
    seed: int

    def __post_init__(self) -> None:
        if self.n_embd % 256:
            raise ValueError(f"n_embd {self.n_embd} must be a multiple of 256 (Q6_K rows)")
        if (self.n_ff % 32) or (self.n_head * self.head_dim) % 32:
            raise ValueError("n_ff and n_head * head_dim must be multiples of 32 (Q4_0 rows)")
        if self.n_vocab <= FIRST_PIECE:
            raise ValueError(f"n_vocab must exceed {FIRST_PIECE} (control and byte tokens)")

    def key(self) -> str:
        """Cache key: the name made file-safe plus a hash of every field and the format."""
        blob = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-")
        return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


GEMMA2_2B = ModelSpec(
    name="gemma2:2b",
    n_layer=26,
    n_embd=2304,
    n_ff=9216,
    n_head=8,
    n_head_kv=4,
    head_dim=256,
    n_vocab=256_000,
    context_length=8192,
    sliding_window=4096,
    seed=2,
)
# a few MB, loads in milliseconds: for tests that need a real engine but not real cost
GEMMA2_TINY = ModelSpec(
    name="gemma2-shaped:tiny",
    n_layer=2,
    n_embd=256,
    n_ff=1024,
    n_head=4,
    n_head_kv=2,
    head_dim=64,
    n_vocab=4096,
    context_length=8192,
    sliding_window=4096,
    seed=1,
)
# the real width and vocabulary-sized embedding of a small model, 3 blocks: ~192 MB
GEMMA2_SMALL = ModelSpec(
    name="gemma2-shaped:small",
    n_layer=3,
    n_embd=2304,
    n_ff=9216,
    n_head=8,
    n_head_kv=4,
    head_dim=256,
    n_vocab=32_000,
    context_length=8192,
    sliding_window=4096,
    seed=3,
)
SPECS = {"gemma2-2b": GEMMA2_2B, "tiny": GEMMA2_TINY, "small": GEMMA2_SMALL}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor: ggml name, numpy-order shape (rows, columns) and type."""

    name: str
    shape: tuple[int, ...]
    dtype: gguf.GGMLQuantizationType

    @property
    def byte_shape(self) -> tuple[int, ...]:
        block, type_size = gguf.GGML_QUANT_SIZES[self.dtype]
        *rows, cols = self.shape
        return (*rows, cols // block * type_size)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.byte_shape))


def tensor_plan(spec: ModelSpec) -> list[TensorPlan]:
    """The tensors llama.cpp's gemma2 loader wants, in file order."""
    q_dim, kv_dim = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    plan = [TensorPlan("token_embd.weight", (spec.n_vocab, spec.n_embd), Q6_K)]
    for i in range(spec.n_layer):
        blk = f"blk.{i}."
        plan += [
            TensorPlan(blk + "attn_norm.weight", (spec.n_embd,), F32),
            TensorPlan(blk + "attn_q.weight", (q_dim, spec.n_embd), Q4_0),
            TensorPlan(blk + "attn_k.weight", (kv_dim, spec.n_embd), Q4_0),
            TensorPlan(blk + "attn_v.weight", (kv_dim, spec.n_embd), Q4_0),
            TensorPlan(blk + "attn_output.weight", (spec.n_embd, q_dim), Q4_0),
            TensorPlan(blk + "post_attention_norm.weight", (spec.n_embd,), F32),
            TensorPlan(blk + "ffn_norm.weight", (spec.n_embd,), F32),
            TensorPlan(blk + "ffn_gate.weight", (spec.n_ff, spec.n_embd), Q4_0),
            TensorPlan(blk + "ffn_up.weight", (spec.n_ff, spec.n_embd), Q4_0),
            TensorPlan(blk + "ffn_down.weight", (spec.n_embd, spec.n_ff), Q4_0),
            TensorPlan(blk + "post_ffw_norm.weight", (spec.n_embd,), F32),
        ]
    plan.append(TensorPlan("output_norm.weight", (spec.n_embd,), F32))
    return plan


def _word(k: int) -> str:
    out: list[str] = []
    k += 1
    while k:
        k, digit = divmod(k - 1, len(_SYLLABLES))
        out.append(_SYLLABLES[digit])
    return "".join(reversed(out))


# Common English words (and the words of labctl's prompts) as whole pieces, so that an English
# prompt costs about as many tokens as with gemma2's real tokenizer ("Why is the sky blue?" with
# the chat template: 15 there) instead of one per syllable: prompt processing time and TTFT
# then match the real model's. Each word comes with "▁word", "▁Word" and the prefixes the SPM
# merges pass through.
_ENGLISH_TEXT = """the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by not word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write would like
so these her long make thing see him two has look more day could go come did number sound no most
people my over know water than call first who may down side been now find any new work part take
get place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men change
went light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover
food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run don while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began
idea fish mountain stop once base hear horse cut sure watch color colour face wood main enough plain
girl usual young ready above ever red list though feel talk bird soon body dog family direct pose
leave song measure door product black short numeral class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language
among explain paragraph paragraphs sky sunset sunsets curious twelve scatter scatters scattering
sunlight molecule molecules wavelength wavelengths dome noon because user model hello summarize
summary answer reply story poem"""
ENGLISH = tuple(_ENGLISH_TEXT.split())


def _english_pieces() -> list[str]:
    """English pieces in order of preference, each preceded by the prefixes its merges need."""
    pieces: dict[str, None] = {}
    for word in ENGLISH:
        for form in (word, word.capitalize()):
            spaced = "\u2581" + form
            for end in range(2, len(spaced) + 1):
                pieces.setdefault(spaced[:end], None)
            for end in range(2, len(form) + 1):  # the word without a space before it
                pieces.setdefault(form[:end], None)
    return list(pieces)


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: gemma's control ids, byte tokens, English pieces, then
    pseudo-words."""
    control = gguf.TokenType.CONTROL
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [control, control, control, gguf.TokenType.UNKNOWN, control]
    tokens += [f"<unused{i}>" for i in range(START_OF_TURN_ID - len(tokens))]
    types += [control] * (START_OF_TURN_ID - len(types))
    tokens += ["<start_of_turn>", "<end_of_turn>"]
    types += [control, control]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    english = _english_pieces()[: n_vocab - len(tokens)]
    tokens += english
    types += [gguf.TokenType.NORMAL] * len(english)
    # longer pieces score higher, so the SPM merges end on whole words
    scores += [float(len(piece)) for piece in english]
    seen.update(english)
    j = 0
    while len(tokens) < n_vocab:
        # word starts ("▁" = a space before) and continuations alternate: two pieces per word
        word = _word(j // 2)
        piece = "\u2581" + word if j % 2 == 0 else word
        j += 1
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        scores.append(float(-j))
    return tokens, scores, [int(t) for t in types]


def _writer(spec: ModelSpec, path: Path) -> gguf.GGUFWriter:
    """A writer holding the spec's metadata and tensor infos (no data yet)."""
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(spec.name)
    writer.add_description(DESCRIPTION)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_attn_logit_softcapping(ATTN_LOGIT_SOFTCAP)
    writer.add_final_logit_softcapping(FINAL_LOGIT_SOFTCAP)
    writer.add_sliding_window(spec.sliding_window)
    tokens, scores, types = vocabulary(spec.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for t in tensor_plan(spec):
        writer.add_tensor_info(
            t.name, t.byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.dtype
        )
    return writer


class _Blocks:
    """One tensor's bytes, produced chunk by chunk as the writer asks for them.

    Stands in for the numpy array `GGUFWriter.write_tensor_data` takes (it uses `nbytes` and
    `tofile`), so a 480 MB embedding never sits in memory whole.
    """

    def __init__(self, spec: ModelSpec, plan: TensorPlan) -> None:
        self.plan = plan
        self.nbytes = plan.nbytes
        self.seed = int.from_bytes(
            hashlib.sha256(f"{spec.seed}:{plan.name}".encode()).digest()[:16], "little"
        )

    def chunks(self) -> Iterator[memoryview]:
        if self.plan.dtype == F32:
            yield memoryview(np.ones(self.plan.shape, dtype="<f4").tobytes())
            return
        rows, row_bytes = self.plan.byte_shape
        type_size = gguf.GGML_QUANT_SIZES[self.plan.dtype][1]
        bits = np.random.PCG64(self.seed)
        step = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, rows, step):
            n = min(step, rows - start) * row_bytes
            raw = bits.random_raw(-(-n // 8)).view(np.uint8)[:n]
            blocks = raw.reshape(-1, type_size)
            if self.plan.dtype == Q4_0:
                blocks[:, 0:2] = np.frombuffer(Q4_0_D.astype("<f2").tobytes(), np.uint8)
            else:
                blocks[:, Q6_K_SCALES] = (blocks[:, Q6_K_SCALES] & 7) + 1  # scales 1..8
                blocks[:, -2:] = np.frombuffer(Q6_K_D.astype("<f2").tobytes(), np.uint8)
            yield raw.data

    def tofile(self, fp: IO[bytes]) -> None:
        for chunk in self.chunks():
            fp.write(chunk)

    def byteswap(self, inplace: bool = False) -> Any:  # only asked for on big-endian writers
        raise NotImplementedError("big-endian GGUF files are not written")


def write_model(spec: ModelSpec, path: Path | str) -> str:
    """Write the spec's GGUF file to `path`; returns "sha256:<hex>" of the file."""
    path = Path(path)
    writer = _writer(spec, path)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensor_plan(spec):
            writer.write_tensor_data(cast(np.ndarray, _Blocks(spec, t)))
        writer.flush()
    finally:
        writer.close()
    return file_digest(path)


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def metadata_bytes(spec: ModelSpec) -> int:
    """Bytes before the tensor data: header, metadata, tensor infos and alignment padding."""
    with tempfile.TemporaryDirectory(prefix="gguf-meta-") as tmp:
        path = Path(tmp) / "meta.gguf"
        writer = _writer(spec, path)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.flush()
            size = path.stat().st_size
        finally:
            writer.close()
    return gguf.GGUFWriter.ggml_pad(size, gguf.GGUF_DEFAULT_ALIGNMENT)


def expected_size(spec: ModelSpec) -> int:
    """The file's size in bytes, without writing its tensor data."""
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    data = sum(gguf.GGUFWriter.ggml_pad(t.nbytes, align) for t in tensor_plan(spec))
    return metadata_bytes(spec) + data


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "models"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"gguf_model: another process is writing {path.stem}; waiting",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_model(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """The spec's cached file, writing it first when needed (one writer at a time per key).

    The file appears under its final name only when complete (written aside, then renamed), and
    its digest is kept next to it in `<key>.gguf.sha256` (see `model_digest`).
    """
    cache = cache_dir or default_cache_dir()
    target = cache / f"{spec.key()}.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache / f"{spec.key()}.lock"):
        if target.is_file():  # another process wrote it while we waited
            return target
        for stale in cache.glob(f"{target.name}.partial-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        try:
            digest = write_model(spec, partial)
            _digest_file(target).write_text(digest + "\n")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def model_digest(path: Path) -> str:
    """The "sha256:<hex>" of a model file: from the cache's record when present, else computed."""
    record = _digest_file(path)
    if record.is_file() and record.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        return record.read_text().strip()
    return file_digest(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.doubles.gguf_model",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--spec", choices=sorted(SPECS), default="gemma2-2b")
    parser.add_argument("--out", type=Path, help="write here (default: the cache)")
    args = parser.parse_args(argv)
    spec = SPECS[args.spec]
    started = time.monotonic()
    if args.out:
        digest = write_model(spec, args.out)
        path = args.out
    else:
        path = ensure_model(spec)
        digest = model_digest(path)
    print(
        f"gguf_model: {spec.name} {path.stat().st_size} bytes {digest} "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
