"""Train-step throughput and MFU: our jitted step against the PyTorch reference, side by side.

For each model, both implementations run the same CoCoHaNeRe step (same encoder weights and config, batch,
k, token lengths, bank size and thread count, dropout on) on the same batches of real standard-library
(docstring, function) pairs tokenised with all-MiniLM-L6-v2's tokenizer; both banks start full of random
unit vectors (the steady state), or with ``--bank_fill model`` of our encoder's embeddings of the bank's own
rows (as a trained bank holds them: the neighbours retrieved are then alike, in length too, which is what
length plans must expect). Steps alternate ours / reference round by round; the table gives the
median step time, pairs/s, the paired ratio (reference time / our time, > 1 = ours faster), our compile
time, and the model-FLOPs utilisation of each against the matmul peak (in ``--dtype``) measured in this
process. On a GPU both run there (``JAX_PLATFORMS=cuda``: the script pins JAX to the CPU unless it is set;
the reference on ``cuda``), with peak memory (benchmarks/run_gpu.sh).

    python -m benchmarks.train_step                  # full run (sizes below), writes results/train_step.json
    python -m benchmarks.train_step --smoke          # tiny models, seconds
    # the paper's configuration on a GPU, bf16 (issue 6):
    python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=32,10,128,256" --bank 8096 \
        --dtype bfloat16 --out benchmarks/results/train_step_gpu.json

Models: ``minilm`` (real all-MiniLM-L6-v2 weights), ``minilm-shape`` (its architecture with random weights,
for machines without the weights: the GPU), ``codet5p-110m`` (CodeT5+ 110M embedding shape, random weights). Sizes are per model: ``--sizes minilm=B,k,Lq,Lc;codet5p-110m=...``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from typing import Any, Callable

from benchmarks import common

DEFAULT_SIZES = {"minilm": (8, 10, 32, 64), "codet5p-110m": (4, 10, 32, 64)}
# One tiny model in smoke runs (the step's compile dominates); encode.py --smoke covers the T5 side.
SMOKE_SIZES = {"bert-tiny": (4, 1, 16, 24)}


def parse_sizes(text: str | None, default: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    if not text:
        return dict(default)
    out = {}
    for part in text.split(";"):
        name, _, values = part.partition("=")
        out[name.strip()] = tuple(int(v) for v in values.split(","))
    return out


# ------------------------------------------------------------------------------------------- setup


class Workload:
    """Token table, bank prefill and batches shared by both implementations."""

    def __init__(self, vocab_size: int, batch: int, lq: int, lc: int, bank_size: int, dim: int,
                 steps: int, seed: int = 0, pairs_limit: int | None = None):
        import numpy as np
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(common.minilm_folder())
        pairs = common.stdlib_pairs(pairs_limit)
        rows = bank_size + steps * batch  # bank entries + fresh batches, all distinct DataIDs
        reps = -(-rows // len(pairs))
        q = common.token_rows(tokenizer, [p[0] for p in pairs], lq, vocab_size)
        c = common.token_rows(tokenizer, [p[1] for p in pairs], lc, vocab_size)
        self.query_ids = np.tile(q, (reps, 1))[:rows]
        self.code_ids = np.tile(c, (reps, 1))[:rows]
        rng = np.random.default_rng(seed)
        emb = rng.standard_normal((2, bank_size, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
        self.bank_query_emb, self.bank_code_emb = emb[0], emb[1]
        self.bank_ids = rng.permutation(bank_size).astype(np.int32)  # DataIDs 0..M-1 in the bank
        self.batch, self.bank_size, self.steps = batch, bank_size, steps
        self.real_tokens = {"query": float((self.query_ids != 0).mean()), "code": float((self.code_ids != 0).mean())}

    def batch_ids(self, s: int):
        import numpy as np

        start = self.bank_size + (s % self.steps) * self.batch
        return np.arange(start, start + self.batch, dtype=np.int32)


# --smoke: fast XLA:CPU compiles (as tests/test_step.py uses); the timings of a smoke run mean nothing.
SMOKE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SMOKE_PAIRS = 256  # text pairs tokenised for a smoke run


CHUNK_OPTION = re.compile(r"c[1-9][0-9]*")  # a --length_buckets value's last "+cN": that step's length chunk


def parse_variant(spec: int | str) -> tuple[int, bool, bool | str]:
    """``4`` / ``"4"`` -> (4, False, False); ``"4+scan"`` -> (4, True, False); ``"4+plan"``, ``"4+scan+plan"``:
    the same with length plans (``StepConfig.length_plan="auto"`` and the table's histogram, the step's
    margin and neighbour correlation; True), and ``"...+plan+iid"`` with the plans made as before
    ``length_plan_correlation`` (every row independent, ``length_plan_margin=3``; "iid"); ``"4+pack"``,
    ``"4+scan+pack"``: packed rows (``StepConfig.length_pack``; "pack"), every packed row in the chunks
    (``length_pack_keep=False``); ``"4+pack+keep"``: the fullest packed rows kept as one batch
    (``length_pack_keep``, from the table's histogram; "pack_keep"). A last option ``+cN`` sets that
    step's length chunk (`variant_chunk`), so that chunk sizes can be timed side by side."""
    text = str(spec)
    nb, *options = text.split("+")
    if options and CHUNK_OPTION.fullmatch(options[-1]):
        options = options[:-1]
        if nb == "0":
            raise SystemExit(f"--length_buckets: {text!r}: the padded step (0) has no length chunks")
    if not nb.isdigit() or any(o not in ("scan", "plan", "iid", "pack", "keep") for o in options) \
            or len(set(options)) != len(options) or (nb == "0" and ("plan" in options or "pack" in options)) \
            or ("iid" in options and "plan" not in options) or ("plan" in options and "pack" in options) \
            or ("keep" in options and "pack" not in options):
        raise SystemExit(f"--length_buckets: {text!r} is not N, N+scan, N+plan, N+scan+plan, N+pack, N+scan+pack "
                         "(+keep after +pack), or a plan with +iid after +plan, each optionally ending in +cN (N = "
                         "StepConfig.length_buckets, 0 = padded, which has no plans or packing; cN = N rows per "
                         "length chunk)")
    mode = ("pack_keep" if "keep" in options else "pack") if "pack" in options else (
        "iid" if "iid" in options else "plan" in options)
    return int(nb), "scan" in options, mode


def fill_bank_from_model(work: "Workload", enc: Any) -> None:
    """The workload's banks start as ``enc``'s embeddings of the bank's rows (``--bank_fill model``)."""
    import numpy as np

    rows = lambda ids: np.where(ids == 0, enc.pad_id, ids)[work.bank_ids]  # noqa: E731  (rows padded with the tokenizer's 0)
    work.bank_query_emb = enc.embed_ids(rows(work.query_ids))
    work.bank_code_emb = enc.embed_ids(rows(work.code_ids))


def variant_chunk(spec: int | str, default: int) -> int:
    """The length chunk a ``--length_buckets`` value asks for: N from a last ``+cN``, else ``default``
    (``--length_chunk``)."""
    last = str(spec).split("+")[-1]
    return int(last[1:]) if CHUNK_OPTION.fullmatch(last) else default


def make_ours(enc: Any, work: Workload, k: int, compiler_options: dict | None = None,
              reencode_fraction: float | None = None, length_buckets: int = 0, length_chunk: int = 8,
              length_plan: bool | str = False):
    """Our compiled step and a closure that runs step ``s``; returns (run, compile_seconds).

    ``reencode_fraction``: de-duplicate the retrieved neighbours and re-encode at most this fraction of
    the batch's B*k rows per direction (``StepConfig.dedup_negatives`` / ``reencode_fraction``).
    ``length_plan``: the length-aware pools along static length plans from the table's histogram
    (``StepConfig.length_plan="auto"``, as train.py runs it), else the bucketed chunks alone; ``"iid"``:
    plans for independent rows at 3 standard deviations (``length_plan_correlation=0``,
    ``length_plan_margin=3``: the default before neighbour pools were measured); ``"pack"``: packed rows
    (``StepConfig.length_pack``), every packed row in the chunks; ``"pack_keep"``: with the fullest packed
    rows kept (``length_pack_keep``, from the table's histogram).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cocohanere_jax import bank as bank_lib
    from cocohanere_jax import sharding
    from cocohanere_jax import optim, reencode
    from cocohanere_jax import step as S
    from cocohanere_jax.step_config import StepConfig
    from cocohanere_jax.token_table import TokenTable

    config = StepConfig(k=max(k, 1), bank_size=work.bank_size, hard_negative_weight=1.0 if k else 0.0,
                        mask_duplicates=False, dedup_negatives=reencode_fraction is not None,
                        reencode_fraction=reencode_fraction or 1.0, length_buckets=length_buckets,
                        length_chunk=length_chunk, length_pack=length_plan in ("pack", "pack_keep"),
                        length_pack_keep=length_plan == "pack_keep",
                        length_plan="auto" if length_plan in (True, "iid") else "never",
                        length_aware_on="all",  # the step this label names, on any device (a GPU's default is padded)
                        **(dict(length_plan_margin=3.0, length_plan_correlation=0.0) if length_plan == "iid" else {}))
    tx = optim.make_optimizer(config, total_steps=100_000)
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = S.init_train_state(enc.params, tx, config, enc.dim, rng=0)

    def bank(emb):
        return bank_lib.Bank(embeddings=jnp.asarray(emb), ids=jnp.asarray(work.bank_ids), ptr=jnp.zeros((), jnp.int32))

    state = sharding.replicate(state.replace(query_bank=bank(work.bank_query_emb), code_bank=bank(work.bank_code_emb)), mesh)
    tokens = TokenTable(work.query_ids, work.code_ids, pad_id=enc.pad_id)
    table = sharding.replicate(tokens.device_view(), mesh)

    def batch(s):
        return sharding.shard_batch(tokens.batch(work.batch_ids(s), token_rows=False), mesh)

    fn = S.make_train_step(enc.module, tx, config, mesh, pad_id=enc.pad_id, compiler_options=compiler_options,
                           length_stats=reencode.LengthStats.from_table(tokens) if length_plan in (True, "iid", "pack_keep") else None)
    t = time.perf_counter()
    compiled = fn.lower(state, batch(0), table).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state, "s": 0}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch(holder["s"]), table)
        holder["s"] += 1
        run.misses.append(metrics["length_plan_misses"])  # read after the timing (`measure`)
        return metrics

    run.misses = []

    def check():
        m = jax.device_get(run())
        return {name: float(np.asarray(v)) for name, v in m.items()}

    run.compiled = compiled
    return run, compile_s, check


def make_reference(folder: str, work: Workload, k: int, dim: int, pad_id: int, dtype: str = "float32",
                   padding: str = "cap"):
    """The PyTorch reference step on the same workload (on :func:`common.torch_device`; ``dtype``
    "bfloat16" runs the encoder under ``torch.autocast``, float32 weights and optimizer); returns run()."""
    import torch

    from benchmarks.reference_torch import TorchReferenceStep, prefill

    model, pooling = common.load_torch_model(folder)
    ref = TorchReferenceStep(
        model, pooling, pad_id, torch.from_numpy(work.query_ids), torch.from_numpy(work.code_ids),
        dim=dim, k=k, bank_size=work.bank_size, device=common.torch_device(),
        autocast_dtype=None if dtype == "float32" else getattr(torch, dtype),
    )
    ref.padding = padding
    prefill(ref, torch.from_numpy(work.bank_query_emb), torch.from_numpy(work.bank_code_emb),
            torch.from_numpy(work.bank_ids))
    holder = {"s": 0}

    def run():
        ids = work.batch_ids(holder["s"])
        holder["s"] += 1
        return ref.step(torch.from_numpy(ids), torch.from_numpy(work.query_ids[ids]),
                        torch.from_numpy(work.code_ids[ids]))

    return run


def real_token_flops(family: str, config: Any, work: Workload, batch: int, k: int) -> float:
    """Model FLOPs of one step counted on real (non-pad) tokens: forward + backward (3x forward) of B
    queries, B codes and (k > 0) B*k of each as negatives, each row at the table's mean per-row FLOPs
    (the rows the step actually retrieves are a sample of the same table)."""
    import numpy as np

    def mean_row(ids):
        lengths = np.maximum((ids != work.pad_id).sum(axis=1), 1)
        return float(np.mean([common.encoder_flops(family, config, 1, int(n)) for n in lengths]))

    per_pair = mean_row(work.query_ids) + mean_row(work.code_ids)
    return 3.0 * per_pair * batch * (1 + k)


def measure(name: str, folder: str, batch: int, k: int, lq: int, lc: int, bank_size: int, rounds: int,
            peak_gflops: float, reference: bool = True, compiler_options: dict | None = None,
            pairs_limit: int | None = None, reencode_fraction: float | None = None,
            dtype: str = "float32", length_buckets: tuple[int | str, ...] = (0,), length_chunk: int = 8,
            reference_padding: tuple[str, ...] = ("cap",), bank_fill: str = "random") -> dict[str, Any]:
    """One configuration: every implementation, interleaved round by round; returns the result row.

    ``length_buckets``: one of our steps per value (0 = padded to the cap; n = `StepConfig.length_buckets`;
    "n+scan" = the same with the encoder's layers scanned, `model.scan_layers`; "+plan": with length plans);
    ``reference_padding``: one PyTorch reference per value ("cap" = the authors' way, "longest" = each
    encode call padded to its longest row). The first of each is ``ours`` / ``reference`` (ratio columns).
    ``dtype``: compute dtype of both encoders ("bfloat16": our ``load_encoder(dtype=...)`` with float32
    parameters and optimizer, the reference under ``torch.autocast``). ``bank_fill``: "random" unit vectors
    or "model" (`Encoder.embed_ids` of the bank's rows, the same for both implementations).
    """
    import jax.numpy as jnp
    import numpy as np

    import cocohanere_jax

    enc = cocohanere_jax.load_encoder(folder, dtype=getattr(jnp, dtype))
    work = Workload(int(getattr(enc.config, "vocab_size")), batch, lq, lc, bank_size, enc.dim, steps=max(rounds + 2, 8),
                    pairs_limit=pairs_limit)
    work.pad_id = enc.pad_id
    if bank_fill == "model":
        fill_bank_from_model(work, enc)
    elif bank_fill != "random":
        raise SystemExit(f"train_step: --bank_fill {bank_fill!r}; use random or model")
    fns, compile_s, checks = {}, {}, {}
    scanned = None
    for spec in length_buckets:
        nb, scan, plan = parse_variant(spec)
        label = implementation_label("--length_buckets", spec)
        if scan and scanned is None:
            scanned = cocohanere_jax.load_encoder(folder, dtype=getattr(jnp, dtype), scan_layers=True)
        fns[label], compile_s[label], checks[label] = make_ours(scanned if scan else enc, work, k, compiler_options,
                                                                reencode_fraction, nb,
                                                                variant_chunk(spec, length_chunk), plan)
    if reference:
        for padding in reference_padding:
            label = implementation_label("--reference_padding", padding)
            fns[label] = make_reference(folder, work, k, enc.dim, enc.pad_id, dtype, padding)
    times = common.interleaved(fns, rounds=rounds, warmup=1)
    flops = common.step_model_flops(enc.family, enc.config, batch, k, lq, lc)
    real_flops = real_token_flops(enc.family, enc.config, work, batch, k)
    row: dict[str, Any] = {
        "model": name, "batch": batch, "k": k, "lq": lq, "lc": lc, "bank": bank_size, "bank_fill": bank_fill,
        "model_gflops_per_step": flops / 1e9, "real_token_gflops_per_step": real_flops / 1e9,
        "reencode_fraction": reencode_fraction,
        "real_token_fraction": work.real_tokens, "dtype": dtype, "ours_peak_bytes": _jax_peak_bytes(),
        "length_chunk": length_chunk,
        "process_max_rss_gb": _max_rss_gb(),
    }
    for label, ts in times.items():
        med = common.summary(ts)["median_s"]
        row[f"{label}_step_s"] = med
        row[f"{label}_pairs_per_s"] = batch / med
        row[f"{label}_mfu"] = flops / med / (peak_gflops * 1e9)  # padded-token FLOPs (as before)
        row[f"{label}_real_mfu"] = real_flops / med / (peak_gflops * 1e9)  # real-token FLOPs
        row[f"{label}_times_s"] = ts
        if label in compile_s:
            row[f"{label}_compile_s"] = compile_s[label]
            m = checks[label]()
            row[f"{label}_loss_after"] = m["loss"]
            row[f"{label}_valid_negatives"] = m["valid_negatives"]
            if "_plan" in label:  # pooled encode calls of that step whose plan did not hold
                row[f"{label}_length_plan_misses"] = m["length_plan_misses"]
                # ... of every step run: the warm-up, each timed round, then that checked step
                row[f"{label}_length_plan_misses_per_step"] = [float(np.asarray(x)) for x in fns[label].misses]
    ours_labels = [label for label in times if label.startswith("ours")]
    ref_labels = [label for label in times if label.startswith("reference")]
    for o in ours_labels:
        for r in ref_labels:
            row[f"ratio_{o}_over_{r}"] = common.paired_ratio(times[o], times[r])
    if reference:
        row["reference_peak_bytes"] = _torch_peak_bytes()
    if not ours_labels:  # an --isolate child timing a reference alone
        return row
    # The columns of earlier result files (report.py, growth.py): our first step.
    first = ours_labels[0]
    m = checks[first]()
    row.update(compile_s=compile_s[first], loss_after=m["loss"], valid_negatives=m["valid_negatives"],
               distinct_negatives=m.get("distinct_negatives"), dropped_negatives=m.get("dropped_negatives"))
    if "ours" not in times:  # no padded step: "ours" names the first one (never overwrite a padded step's)
        for name in ("step_s", "pairs_per_s", "mfu", "times_s"):
            row[f"ours_{name}"] = row[f"{first}_{name}"]
        if "reference" in times:
            row["ratio_ours_over_reference"] = row[f"ratio_{first}_over_reference"]
    return row


def implementation_label(flag: str, value: str) -> str:
    """The result-row label of one implementation: ours, ours_b4, ours_b4_scan, ours_b4_plan, ours_b4_scan_plan,
    reference, reference_longest."""
    if flag == "--length_buckets":
        nb, scan, plan = parse_variant(value)
        chunk = variant_chunk(value, 0)
        return (("ours" if nb == 0 else f"ours_b{nb}") + ("_scan" if scan else "")
                + {False: "", True: "_plan", "iid": "_plan_iid", "pack": "_pack", "pack_keep": "_pack_keep"}[plan] + (f"_c{chunk}" if chunk else ""))
    return "reference" if value == "cap" else f"reference_{value}"


def implementations(length_buckets: str, reference_padding: str) -> list[tuple[str, str]]:
    """(flag, value) of every implementation a run times: ours per --length_buckets, one reference per padding."""
    return ([("--length_buckets", v) for v in length_buckets.split(",") if v] +
            [("--reference_padding", v) for v in reference_padding.split(",") if v])


def merge_isolated(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One result row from per-implementation child rows (``--isolate``): each child's columns, its own peak
    memory as ``<label>_max_rss_gb``, and ratios of medians (the children ran one after another, so there
    are no rounds to pair)."""
    shared = ("model", "batch", "k", "lq", "lc", "bank", "model_gflops_per_step", "real_token_gflops_per_step",
              "reencode_fraction", "real_token_fraction", "dtype", "length_chunk")
    done = [child for child in rows if "failed" not in child]
    if not done:
        raise SystemExit("train_step --isolate: every implementation failed: "
                         + "; ".join(f"{c['label']}: {c['failed']}" for c in rows))
    row: dict[str, Any] = {key: done[0][key] for key in shared}
    row["bank_fill"] = done[0].get("bank_fill", "random")  # absent from rows written before the option
    row["isolated"] = True
    labels = []
    for child in rows:
        if "failed" in child:  # e.g. killed for memory: recorded, not timed
            row[f"{child['label']}_failed"] = child["failed"]
            continue
        own = [child["label"]] if "label" in child else sorted(
            {key[: -len("_step_s")] for key in child if key.endswith("_step_s")} - {"ours"} or {"ours"})
        for label in own:
            labels.append(label)
            row.update({key: value for key, value in child.items() if key.startswith(label + "_")})
            row[f"{label}_max_rss_gb"] = child["process_max_rss_gb"]
            peak = child.get("reference_peak_bytes" if label.startswith("reference") else "ours_peak_bytes")
            if peak:  # on a GPU: this implementation's own peak device memory
                row[f"{label}_peak_gpu_gb"] = peak / 2**30
        for key in ("compile_s", "loss_after", "valid_negatives", "reference_peak_bytes", "ours_peak_bytes"):
            if child.get(key) is not None and key not in row:
                row[key] = child[key]
    row["process_max_rss_gb"] = max(child["process_max_rss_gb"] for child in done)
    for o in (label for label in labels if label.startswith("ours")):
        for r in (label for label in labels if label.startswith("reference")):
            row[f"ratio_{o}_over_{r}"] = row[f"{r}_step_s"] / row[f"{o}_step_s"]
    return row


ISOLATE_OWN = ("--isolate", "--isolate_order", "--rounds", "--out", "--length_buckets", "--reference_padding")


def child_argv(argv: list[str]) -> list[str]:
    """The command line of an ``--isolate`` child: ``argv`` without the flags the parent sets per child
    (``--flag=value`` and ``--flag value`` alike)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ISOLATE_OWN:
            skip = "=" not in arg and name != "--isolate"
            continue
        out.append(arg)
    return out


def run_isolated(argv: list[str], args: argparse.Namespace, rounds: int,
                 on_child: Callable[[list[dict[str, Any]], list], None] | None = None
                 ) -> tuple[list[dict[str, Any]], list]:
    """``--isolate``: each implementation in its own child process, one after another (peak memory is then
    one implementation's, not the sum), merged into one row per model; also each child's matmul peak.
    ``on_child(rows, peaks)`` gets the rows merged so far after every child that leaves one (main writes
    them as a partial result file, so a run stopped by a time limit keeps the children it finished)."""
    import json
    import subprocess
    import sys

    base = child_argv(argv)
    children = []
    for flag, value, child_rounds in isolated_schedule(
            implementations(args.length_buckets, args.reference_padding), rounds, args.isolate_order):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "child.json")
            other = "--reference_padding=" if flag == "--length_buckets" else "--length_buckets="
            cmd = [sys.executable, "-m", "benchmarks.train_step", *base, f"{flag}={value}", other, f"--out={out}",
                   f"--rounds={child_rounds}"]
            print("$", " ".join(cmd), flush=True)
            result = subprocess.run(cmd, check=False)
            label = implementation_label(flag, value)
            if result.returncode:
                # A child killed by a signal (9: the kernel's OOM killer on this machine) is recorded, and the
                # other implementations still run.
                why = (f"killed by signal {-result.returncode}" + (" (out of memory)" if result.returncode == -9 else "")
                       if result.returncode < 0 else f"exit status {result.returncode}")
                print(f"train_step --isolate: {label} failed: {why}", flush=True)
                children.append({"label": label, "failed": why})
            else:
                children.append(dict(json.load(open(out)), label=label))
        merged = _merge_children(children)
        if merged and on_child is not None:
            on_child(*merged)
    merged = _merge_children(children)
    if not merged:
        raise SystemExit("train_step --isolate: every implementation failed: "
                         + "; ".join(f"{c['label']}: {c['failed']}" for c in children))
    return merged


def _merge_children(children: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list] | None:
    """(one merged row per model, every child's matmul peak in run order), or None while no child has rows."""
    peaks = [child.get("matmul_peak") for child in children]
    rows = combine_passes(children)
    per_model = max(len(child.get("results", [])) for child in rows)
    if not per_model:
        return None
    return [merge_isolated([dict(child["results"][i], label=child["label"]) if "results" in child else child
                            for child in rows])
            for i in range(per_model)], peaks


def isolated_schedule(impls: list[tuple[str, str]], rounds: int, order: str) -> list[tuple[str, str, int]]:
    """(flag, value, timed rounds) of every ``--isolate`` child, in the order they run.

    "forward": each implementation once, all ``rounds`` in one child. "mirror": every implementation twice,
    in the order A B C C B A, half the rounds each time, so that a machine that drifts slower or faster
    over the run (measured: the matmul probe fell from 126 to 76 GFLOP/s between children) weighs on every
    implementation alike; a linear drift cancels in the medians.
    """
    if order == "forward":
        return [(flag, value, rounds) for flag, value in impls]
    if order != "mirror":
        raise ValueError(f"train_step: --isolate_order={order!r}; use forward or mirror")
    first, second = -(-rounds // 2), max(1, rounds // 2)
    return [(f, v, first) for f, v in impls] + [(f, v, second) for f, v in reversed(impls)]


def combine_passes(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One child payload per implementation from its passes (``--isolate_order mirror`` runs each twice).

    Per result row: the passes' timed rounds concatenated in the order they ran, the median and pairs/s of
    them all, the MFU columns over the passes' mean matmul peak, the larger peak memory, the first pass's
    compile time. An implementation that failed in any pass is recorded as failed (with the first reason)."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for child in children:
        by_label.setdefault(child["label"], []).append(child)
    out = []
    for label, passes in by_label.items():
        failed = [p for p in passes if "failed" in p]
        if len(passes) == 1 or failed:
            out.append(failed[0] if failed else passes[0])
            continue
        results = []
        for rows in zip(*(p["results"] for p in passes)):
            row = dict(rows[0])
            for key in [k[: -len("_times_s")] for k in rows[0] if k.endswith("_times_s")]:
                times = [t for r in rows for t in r[f"{key}_times_s"]]
                med = statistics.median(times)
                row.update({f"{key}_times_s": times, f"{key}_step_s": med, f"{key}_pairs_per_s": row["batch"] / med})
                for mfu in ("mfu", "real_mfu"):  # mfu x seconds = FLOPs / peak: averaged over the passes' peaks
                    if f"{key}_{mfu}" in rows[0]:
                        row[f"{key}_{mfu}"] = sum(r[f"{key}_{mfu}"] * r[f"{key}_step_s"] for r in rows) / len(rows) / med
            row["process_max_rss_gb"] = max(r["process_max_rss_gb"] for r in rows)
            row["passes"] = len(rows)
            results.append(row)
        out.append(dict(passes[0], results=results))
    return out


def _max_rss_gb() -> float:
    """Peak resident memory of this process so far (every implementation of the run together), GB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _jax_peak_bytes() -> int | None:
    """Peak bytes in use on the default JAX device so far (accelerators; None where not reported, e.g. CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _torch_peak_bytes() -> int | None:
    """Peak bytes allocated by PyTorch on the GPU so far (None on CPU)."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


COLUMNS = ["model", "batch", "k", "lq", "lc", "bank", "compile_s", "ours_step_s", "reference_step_s",
           "ours_pairs_per_s", "reference_pairs_per_s", "ratio_ours_over_reference", "ours_mfu", "reference_mfu"]


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes (CI)")
    parser.add_argument("--models", default=None, help="comma-separated; default minilm,codet5p-110m")
    parser.add_argument("--sizes", default=None, help="per model B,k,Lq,Lc, e.g. 'minilm=8,4,32,64'")
    parser.add_argument("--bank", type=int, default=None, help="bank entries (default 8096; smoke 64)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per implementation")
    parser.add_argument("--threads", type=int, default=None, help="cores for XLA and torch (default all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both encoders; the matmul peak is measured in it too")
    parser.add_argument("--reencode_fraction", default=None,
                        help="comma-separated fractions, one row each: ours de-duplicates the neighbours and "
                             "re-encodes at most this fraction of B*k rows per direction (the reference "
                             "re-encodes all B*k)")
    parser.add_argument("--length_buckets", default="0",
                        help="comma-separated StepConfig.length_buckets values, one of our steps each (0 = padded; "
                             "N+scan = with the encoder's layers scanned, model.scan_layers)")
    parser.add_argument("--length_chunk", type=int, default=8, help="StepConfig.length_chunk")
    parser.add_argument("--bank_fill", default="random", choices=("random", "model"),
                        help="the banks' starting embeddings: random unit vectors, or our encoder's of the bank rows")
    parser.add_argument("--reference_padding", default="cap",
                        help="comma-separated PyTorch references: cap (authors') and/or longest (per call)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--isolate", action="store_true",
                        help="run each implementation in its own process, one after another (peak memory one "
                             "implementation's; ratios of medians instead of paired rounds)")
    parser.add_argument("--isolate_order", default="forward", choices=("forward", "mirror"),
                        help="with --isolate: forward = each implementation once, one after another; mirror = "
                             "each twice, A B C C B A, half the rounds each (cancels a machine's drift)")
    args = parser.parse_args(argv)
    threads = common.pin_threads(args.threads)
    rounds = args.rounds or (1 if args.smoke else 5)
    if args.isolate:
        import sys

        machine = common.machine_info(threads)
        out = args.out or common.default_out("train_step", args.smoke)

        def write(rows, peaks, partial=True):
            payload = {"benchmark": "train_step", "isolated": True, "isolate_order": args.isolate_order,
                       "machine": machine, "matmul_peak": peaks, "results": rows}
            common.write_json(out, dict(payload, partial=True) if partial else payload)
            return payload

        rows, peaks = run_isolated(list(sys.argv[1:] if argv is None else argv), args, rounds, on_child=write)
        payload = write(rows, peaks, partial=False)
        common.print_table(rows, ["model", "batch", "k", "lq", "lc"] + sorted(
            c for c in rows[0] if c.endswith(("_step_s", "_max_rss_gb")) or c.startswith("ratio_")))
        return payload

    sizes = parse_sizes(args.sizes, SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    models = args.models.split(",") if args.models else list(sizes)
    bank = args.bank or (64 if args.smoke else 8096)
    machine = common.machine_info(threads)
    peak = common.measure_matmul_peak(256 if args.smoke else 2048, dtype=args.dtype)
    print(f"threads {threads}; {args.dtype} matmul peak {peak['peak_gflops']:.1f} GFLOP/s; load {machine['load_average_start']}")
    rows = []
    fractions = [float(f) for f in args.reencode_fraction.split(",")] if args.reencode_fraction else [None]
    reference = bool(args.reference_padding)
    if not args.length_buckets and not reference:
        raise SystemExit("train_step: nothing to time (empty --length_buckets and --reference_padding)")
    for name in models:
        b, k, lq, lc = sizes[name]
        folder = common.model_folder(name, args.cache)
        for fraction in fractions:
            rows.append(measure(name, folder, b, k, lq, lc, bank, rounds, peak["peak_gflops"], reference=reference,
                                compiler_options=SMOKE_COMPILER_OPTIONS if args.smoke else None,
                                pairs_limit=SMOKE_PAIRS if args.smoke else None, reencode_fraction=fraction,
                                dtype=args.dtype,
                                length_buckets=tuple(v for v in args.length_buckets.split(",") if v),
                                length_chunk=args.length_chunk,
                                reference_padding=tuple(v for v in args.reference_padding.split(",") if v),
                                bank_fill=args.bank_fill))
            columns = ["model", "batch", "k", "lq", "lc"] + sorted(
                c for c in rows[-1] if c.endswith(("_step_s", "_compile_s", "_real_mfu")) or c.startswith("ratio_"))
            common.print_table(rows[-1:], columns)
            common.write_json(args.out or common.default_out("train_step", args.smoke),
                              {"benchmark": "train_step", "partial": True, "machine": machine, "results": rows})
    common.print_table(rows, COLUMNS, title="train step (median seconds; ratio = reference time / our time)")
    peak_after = common.measure_matmul_peak(256 if args.smoke else 2048, dtype=args.dtype)
    payload = {"benchmark": "train_step", "smoke": args.smoke, "machine": machine,
               "matmul_peak": peak, "matmul_peak_after": peak_after, "rounds": rounds, "results": rows}
    common.write_json(args.out or common.default_out("train_step", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
