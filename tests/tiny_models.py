"""A tiny linen encoder honouring the encoder contract of WORKSPACE.md, and tiny data for step tests.

``TinyEncoder.apply({"params": p}, input_ids, attention_mask, deterministic=..., rngs={"dropout": k})``
returns [n, dim] L2-normalised rows: token embedding -> dense + tanh -> dropout -> masked mean pooling ->
dense projection -> L2 norm. Parameters follow the dtype they are given (cast them to float64 for
finite-difference checks).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0


class TinyEncoder(nn.Module):
    vocab_size: int = 50
    hidden: int = 32
    dim: int = 16
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, input_ids, attention_mask, deterministic: bool = True):
        x = nn.Embed(self.vocab_size, self.hidden, name="embed")(input_ids)
        x = jnp.tanh(nn.Dense(self.hidden, name="dense")(x))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = attention_mask.astype(x.dtype)[..., None]
        pooled = jnp.sum(x * mask, axis=-2) / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)
        out = nn.Dense(self.dim, name="proj")(pooled)
        return out / jnp.sqrt(jnp.sum(out * out, axis=-1, keepdims=True) + 1e-12)


def init_params(model: TinyEncoder, seed: int = 0, length: int = 8):
    ids = jnp.ones((2, length), jnp.int32)
    return model.init(jax.random.key(seed), ids, ids != PAD_ID)["params"]


def token_table(n_items: int, lq: int, lc: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token rows for ``n_items`` DataIDs: ids in [1, vocab), a random number of trailing pads."""
    rng = np.random.default_rng(seed)

    def rows(length):
        ids = rng.integers(1, vocab, size=(n_items, length)).astype(np.int32)
        lengths = rng.integers(2, length + 1, size=n_items)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
        return ids

    return rows(lq), rows(lc)


def batch_for(ids: np.ndarray, query_ids: np.ndarray, code_ids: np.ndarray) -> dict[str, np.ndarray]:
    """A batch dict for the step from DataIDs and the token table."""
    ids = np.asarray(ids, np.int32)
    return {"data_id": ids, "query_ids": query_ids[ids], "code_ids": code_ids[ids]}


def numpy_search(bank_emb, bank_ids, keys, anchor_ids, k, keep=None):
    """Brute-force masked top-k in numpy (float64): slots, ids, scores, valid; ties to the lower slot."""
    bank_emb, bank_ids = np.asarray(bank_emb, np.float64), np.asarray(bank_ids)
    keys, anchor_ids = np.asarray(keys, np.float64), np.asarray(anchor_ids)
    scores = keys @ bank_emb.T
    allowed = (bank_ids[None, :] != -1) & (bank_ids[None, :] != anchor_ids[:, None])
    if keep is not None:
        allowed &= np.broadcast_to(np.asarray(keep), allowed.shape)
    n = keys.shape[0]
    slots = np.full((n, k), -1, np.int64)
    top = np.full((n, k), -np.inf)
    for i in range(n):
        candidates = np.flatnonzero(allowed[i])
        order = candidates[np.argsort(-scores[i, candidates], kind="stable")][:k]
        slots[i, : len(order)] = order
        top[i, : len(order)] = scores[i, order]
    valid = slots >= 0
    ids = np.where(valid, bank_ids[np.maximum(slots, 0)], -1)
    return slots, ids, top, valid
