"""Encoding throughput: ``load_encoder(...).encode`` against transformers' PyTorch model, side by side.

Texts are real standard-library docstrings (queries, max 128 tokens) and functions (code, max 256 tokens).
Both sides tokenise inside the timed region and embed in batches of the same size, with the same
truncation length and thread count:

* ``ours``: ``Encoder.encode(texts, kind, batch_size)``: sorts by length, pads each batch to a length
  bucket (16, 32, 64, ..., max), one jitted program per bucket (compiled in the untimed warm-up);
* ``reference``: transformers' tokenizer (``padding="longest"``, ``truncation``) and model in eval mode
  under ``torch.inference_mode()``, batches in the given order (what a plain transformers loop does);
* ``reference_sorted``: the same, batches formed after sorting by length (what sentence-transformers
  does), so the ratio against it isolates the model execution from the batching strategy.

For a model folder without a tokenizer (the random CodeT5+ 110M) the texts are tokenised once with
all-MiniLM-L6-v2's tokenizer outside the timed region and both sides embed the same id rows
(``Encoder.embed_ids`` against the PyTorch model on the same rows, padded to the longest row of the batch).

    python -m benchmarks.encode            # minilm and codet5p-110m; writes results/encode.json
    python -m benchmarks.encode --smoke    # tiny models, seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from benchmarks import common

DEFAULT = {"minilm": 256, "codet5p-110m": 64}  # sequences per kind
SMOKE = {"bert-tiny": 16, "codet5p-tiny": 16}
MAX_LENGTH = {"query": 128, "code": 256}


def torch_embedder(model: Any, pooling: str, pad_id: int):
    import torch

    from benchmarks import reference_torch  # imports torch: after pin_threads

    model.eval()

    def embed(ids: Any, mask: Any) -> Any:
        with torch.inference_mode():
            return reference_torch.embed(model, pooling, ids, mask).numpy()

    return embed


def measure(name: str, folder: str, count: int, batch: int, rounds: int,
            pairs_limit: int | None = None) -> list[dict[str, Any]]:
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    import cocohanere_jax

    enc = cocohanere_jax.load_encoder(folder)
    model, pooling = common.load_torch_model(folder)
    embed = torch_embedder(model, pooling, enc.pad_id)
    pairs = common.stdlib_pairs(pairs_limit)
    rng = np.random.default_rng(0)
    picked = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]
    rows = []
    for kind, texts in (("query", [p[0] for p in picked]), ("code", [p[1] for p in picked])):
        max_length = MAX_LENGTH[kind]
        if enc.tokenizer is not None:
            tokenizer = enc.tokenizer

            def ours(texts=texts, kind=kind):
                return enc.encode(texts, kind=kind, batch_size=batch, max_length=max_length)

            def reference(texts=texts, order=None):
                out = []
                seq = texts if order is None else [texts[i] for i in order]
                for start in range(0, len(seq), batch):
                    t = tokenizer(seq[start:start + batch], padding="longest", truncation=True,
                                  max_length=max_length, return_tensors="pt")
                    out.append(embed(t["input_ids"], t["attention_mask"]))
                return np.concatenate(out)

            lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
            mode = "encode(texts)"
        else:
            tokenizer = AutoTokenizer.from_pretrained(common.minilm_folder())
            ids = common.token_rows(tokenizer, texts, max_length, int(enc.config.vocab_size))

            def ours(ids=ids):
                return enc.embed_ids(ids, batch_size=batch)

            def reference(ids=ids, order=None):
                out = []
                seq = ids if order is None else ids[order]
                for start in range(0, len(seq), batch):
                    chunk = seq[start:start + batch]
                    width = max(int((chunk != enc.pad_id).sum(1).max()), 1)
                    t = torch.from_numpy(chunk[:, :width]).long()
                    out.append(embed(t, (t != enc.pad_id).long()))
                return np.concatenate(out)

            lengths = list((ids != enc.pad_id).sum(1))
            mode = "embed_ids(token rows)"
        order = np.argsort(-np.asarray(lengths), kind="stable")
        fns = {"ours": ours, "reference": reference, "reference_sorted": lambda order=order: reference(order=order)}
        times = common.interleaved(fns, rounds=rounds, warmup=1)
        # Same embeddings (eval mode, float32) as a sanity check of the comparison.
        a, b = ours(), fns["reference"]()
        row = {
            "model": name, "kind": kind, "mode": mode, "sequences": count, "batch": batch,
            "max_length": max_length, "mean_tokens": float(np.mean(lengths)),
            "max_abs_diff_vs_reference": float(np.abs(a - b).max()),
        }
        for impl, ts in times.items():
            s = common.summary(ts)
            row[f"{impl}_s"] = s["median_s"]
            row[f"{impl}_seq_per_s"] = count / s["median_s"]
            row[f"{impl}_times_s"] = ts
        row["ratio_ours_over_reference"] = common.paired_ratio(times["ours"], times["reference"])
        row["ratio_ours_over_reference_sorted"] = common.paired_ratio(times["ours"], times["reference_sorted"])
        rows.append(row)
        common.print_table([row], COLUMNS)
    return rows


COLUMNS = ["model", "kind", "sequences", "batch", "mean_tokens", "ours_seq_per_s", "reference_seq_per_s",
           "reference_sorted_seq_per_s", "ratio_ours_over_reference", "ratio_ours_over_reference_sorted",
           "max_abs_diff_vs_reference"]


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes (CI)")
    parser.add_argument("--models", default=None, help="comma-separated; default minilm,codet5p-110m")
    parser.add_argument("--count", type=int, default=None, help="sequences per kind")
    parser.add_argument("--batch", type=int, default=None, help="sequences per batch (default 32; smoke 8)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    threads = common.pin_threads(args.threads)
    counts = SMOKE if args.smoke else DEFAULT
    models = args.models.split(",") if args.models else list(counts)
    batch = args.batch or (8 if args.smoke else 32)
    rounds = args.rounds or (2 if args.smoke else 3)
    machine = common.machine_info(threads)
    rows = []
    for name in models:
        rows += measure(name, common.model_folder(name, args.cache), args.count or counts[name], batch, rounds,
                        pairs_limit=256 if args.smoke else None)
    common.print_table(rows, COLUMNS, title="encoding (sequences/s; ratio = reference time / our time)")
    payload = {"benchmark": "encode", "smoke": args.smoke, "machine": machine, "rounds": rounds, "results": rows}
    common.write_json(args.out or common.default_out("encode", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
