"""Loading the search model quickly, and its identity.

`load_model(path)` builds the same `cocohanere_jax.Encoder` as `cocohanere_jax.load_encoder`, but when
the folder has a ``tokenizer.json`` it tokenises with the `tokenizers` library directly instead of through
transformers' `AutoTokenizer` (whose import pulls in PyTorch when it is installed: about 2.5 s of a cold
CLI query here). The ids are the same (tests/test_search.py checks it against AutoTokenizer); folders
without ``tokenizer.json`` (sentencepiece, vocab.txt only) go through `load_encoder` unchanged.

`model_fingerprint(encoder)` identifies the vocabulary *and* the weights, so two fine-tunings of one
base model (same tokenizer, hence the same `Encoder.fingerprint`) are different models for an index.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np


class SearchError(Exception):
    """A user-facing error: its message names the file or flag and what to do."""


class FastTokenizer:
    """The subset of a Hugging Face tokenizer that `Encoder.tokenize` / `fingerprint` use."""

    def __init__(self, path: str, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(path)
        self.pad_token_id = pad_token_id
        self._pad_token = self._tok.id_to_token(pad_token_id) or "[PAD]"
        self._length = None

    def __call__(self, texts, max_length, truncation=True, padding="max_length", return_attention_mask=False):
        if self._length != max_length:
            self._tok.enable_truncation(max_length)
            self._tok.enable_padding(length=max_length, pad_id=self.pad_token_id, pad_token=self._pad_token)
            self._length = max_length
        return {"input_ids": [e.ids for e in self._tok.encode_batch(list(texts))]}

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)


def load_model(path: str):
    """An `Encoder` for `path` (a Hugging Face folder, an export of a run, or ``pkg:module/sub``)."""
    from cocohanere_jax.models import encoder as E
    from cocohanere_jax.models import hf

    try:
        folder = E.resolve_model_path(os.fspath(path))
    except FileNotFoundError as e:
        raise SearchError(f"--model {path}: {e}") from None
    if not os.path.isdir(folder):
        raise SearchError(f"--model {path}: {folder} is not a directory; give a Hugging Face model folder "
                          "or the export/ folder of a training run.")
    try:
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return E.load_encoder(folder)
        hf_config = hf.read_config(folder)
        family, cfg = hf.architecture(hf_config, folder, None)
        module = E.build_module(family, cfg)
        state, source = hf.read_state(folder)
        params, passthrough = hf.hf_to_params(state, family, cfg, E.abstract_params(module), source=source)
    except (ValueError, KeyError, OSError) as e:
        raise SearchError(f"--model {path}: not a usable model folder ({folder}): {e}") from None
    import jax
    import jax.numpy as jnp

    return E.Encoder(family=family, config=cfg, module=module, params=jax.tree.map(jnp.asarray, params),
                     tokenizer=FastTokenizer(os.path.join(folder, "tokenizer.json"), int(cfg.pad_token_id)),
                     hf_config=hf_config, source=folder, passthrough=passthrough)


def vocab_hash(tokenizer: Any) -> str:
    if tokenizer is None:
        return "no-tokenizer"
    h = hashlib.sha256()
    for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{tok}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def model_fingerprint(encoder: Any) -> str:
    """sha256 over the vocabulary, the architecture config and every parameter's bytes (sorted paths).

    An encoder object without `params` (e.g. `HashingEncoder`) gives its `fingerprint` attribute.
    """
    params = getattr(encoder, "params", None)
    if params is None:
        return str(encoder.fingerprint)
    cached = getattr(encoder, "_search_fingerprint", None)
    if cached is not None and cached[0] is params:
        return cached[1]
    import jax

    h = hashlib.sha256()
    h.update(vocab_hash(getattr(encoder, "tokenizer", None)).encode())
    h.update(repr(getattr(encoder, "config", "")).encode())
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for p, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(p).encode())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    fp = h.hexdigest()[:24]
    try:
        encoder._search_fingerprint = (params, fp)
    except AttributeError:
        pass
    return fp
