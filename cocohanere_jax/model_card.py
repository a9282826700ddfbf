"""The model card (`README.md`) of an exported model: what it is, how it was trained, how well, how to load it.

Written into every export of a training run, as sentence-transformers and the Hugging Face hub do, so a
folder that travels without its workdir still says what it holds.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

__all__ = ["model_card", "write_model_card"]

_METRICS = (("mrr", "MRR"), ("r@1", "R@1"), ("r@5", "R@5"), ("r@10", "R@10"), ("map@r", "MAP@R"),
            ("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("threshold", "threshold"))
_ROWS = (("zero_shot_valid", "valid, before training"), ("zero_shot_test", "test, before training"),
         ("zero_shot_test_codebase", "test, before training, whole codebase"),
         ("zero_shot_test_targets", "test, before training, own codes only"),
         ("best_valid", "valid, best step"), ("test", "test, best-on-valid step"),
         # config.data.also_test_candidates: the test queries against the other candidate pool
         ("test_codebase", "test, best-on-valid step, whole codebase"),
         ("test_targets", "test, best-on-valid step, own codes only"))


def results_table(summary: Mapping[str, Any]) -> str:
    """A Markdown table of the metrics in ``summary`` (retrieval MRR/R@k, MAP@R or F1; absent rows left out)."""
    rows = [(label, summary[key]) for key, label in _ROWS if isinstance(summary.get(key), Mapping)]
    columns = [(k, name) for k, name in _METRICS if any(k in m for _, m in rows)]
    lines = ["| split | " + " | ".join(name for _, name in columns) + " | queries |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for label, m in rows:
        cells = [f"{m[k]:.4f}" if k in m else "" for k, _ in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {m.get('num_queries', '')} |")
    return "\n".join(lines)


def model_card(out_dir: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The card's Markdown for the export in ``out_dir`` of a run with ``config`` (as a dict) and ``summary``."""
    model, data, step, train = (config.get(k, {}) for k in ("model", "data", "step", "train"))
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    remote_code = bool(hf_config.get("auto_map"))
    sentence_transformers = os.path.isfile(os.path.join(out_dir, "modules.json"))
    libraries = ["transformers"] + (["sentence-transformers"] if sentence_transformers else [])
    hard_negatives = step.get("hard_negative_weight", 1.0) > 0
    method = (f"CoCoHaNeRe: in-batch contrast plus k = {step.get('k')} hard negatives per anchor and direction "
              f"retrieved ({step.get('knn', 'bi')}-knn) from memory banks of {step.get('bank_size')} entries and "
              "re-encoded with gradient") if hard_negatives else "in-batch contrastive training (no hard negatives)"
    trust = ", trust_remote_code=True" if remote_code else ""
    pooling = hf_config.get("cocohanere_pooling", "")
    if remote_code:
        load = (f'model = AutoModel.from_pretrained(path{trust}).eval()\n'
                'with torch.no_grad():\n'
                '    emb = model(**tok(texts, padding=True, truncation=True, return_tensors="pt"))  # unit rows')
    else:
        load = ('model = AutoModel.from_pretrained(path).eval()\n'
                'batch = tok(texts, padding=True, truncation=True, return_tensors="pt")\n'
                'with torch.no_grad():\n'
                '    hidden = model(**batch).last_hidden_state\n' + (
                    'mask = batch["attention_mask"].unsqueeze(-1).float()\n'
                    'emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)'
                    if pooling == "mean" else
                    'emb = torch.nn.functional.normalize(hidden[:, 0], dim=-1)'))
    st = ("\n\nWith sentence-transformers:\n\n```python\nfrom sentence_transformers import SentenceTransformer\n"
          "model = SentenceTransformer(path)\nemb = model.encode(texts, normalize_embeddings=True)\n```"
          if sentence_transformers else "")
    best = summary.get("best_step")
    selected = ", the best on validation; test was evaluated once, with them" if "test" in summary else ""
    return f"""---
library_name: {libraries[-1]}
tags:
- code-search
- cocohanere
- feature-extraction
- sentence-similarity
base_model: {model.get('path', '')}
pipeline_tag: sentence-similarity
---

# Code-search encoder fine-tuned with cocohanere_jax

A bi-encoder for natural-language -> code search: queries and code are embedded by the same encoder into
unit vectors; rank code by the dot product with the query.

## Training

- Base model: `{model.get('path', '')}` (pooling `{pooling or 'model default'}`, compute dtype
  {model.get('dtype', 'float32')}).
- Data: {summary.get('data', data.get('source', ''))}; {summary.get('train_pairs', '?')} training pairs; query
  {data.get('query_length')} / code {data.get('code_length')} tokens.
- Method: {method}; temperature {step.get('temperature')}; L^B weight {step.get('bimodal_weight')}, L^HN
  weight {step.get('hard_negative_weight')}.
- Optimisation: {summary.get('total_steps', '?')} steps of global batch {train.get('global_batch_size')} on
  {summary.get('devices', '?')} device(s); AdamW lr {step.get('learning_rate')}, weight decay
  {step.get('weight_decay')}, linear decay, {step.get('warmup_steps', 0)} warmup steps, grad clip
  {step.get('grad_clip')}; seed {train.get('seed')}.
- Parameters of step {best}{selected}.

## Results

Every query ranked against the whole codebase of its split.

{results_table(summary)}

## Use

With transformers ({', '.join(libraries)} can load this folder):

```python
import torch
from transformers import AutoModel, AutoTokenizer
path = "{os.path.basename(os.path.abspath(out_dir))}"
texts = ["read a json file", "def load(p):\\n    return json.load(open(p))"]
tok = AutoTokenizer.from_pretrained(path)
{load}
```{st}

With cocohanere_jax (JAX): `cocohanere_jax.load_encoder(path).encode(texts, kind="query")`.
"""


def write_model_card(out_dir: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """Writes ``out_dir/README.md``; returns its path."""
    path = os.path.join(out_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(model_card(out_dir, config, summary))
    return path
