"""Pieces shared by the encoders: dense layers in a compute dtype, dropout, attention masks, pooling, L2 norm."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Parameters live in float32; `dtype` is the compute dtype (float32 or bfloat16).
Dense = functools.partial(nn.Dense, param_dtype=jnp.float32)


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float,
              index: jax.Array | None = None) -> jax.Array:
    """Bernoulli(keep_prob) bool mask of ``shape`` from a counter-based hash of (key, element index).

    Element ``i`` (row-major index) is kept iff ``mix(mix(i * G + k0) ^ k1) < keep_prob * 2**32`` with
    ``k0, k1`` the key's first and last 32-bit words (typed key or raw key data) and ``mix`` MurmurHash3's
    finaliser. For a given key, ``i -> hash`` is a bijection of uint32, so the mask is a pseudo-random
    draw; distinct keys (every ``make_rng`` call gives one, from jax.random) give unrelated masks.
    About 10 integer operations per element against ~100 for ``jax.random.bernoulli``'s threefry2x32:
    on CPU dropout masks cost about 5x less to compute and XLA:CPU compiles the train step about 40% faster.
    ``index`` (uint32, broadcastable to ``shape``) replaces the row-major element index: attention uses it
    so that a mask does not depend on the padded length (`attention_index`).
    """
    key = key_words(key)
    k0, k1 = key[..., 0], key[..., -1]
    size = int(np.prod(shape))
    if size >= 2**32:
        raise ValueError(f"layers.py: keep_mask supports fewer than 2**32 elements, got shape {shape}.")
    if index is None:
        index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    else:
        index = jnp.broadcast_to(index.astype(jnp.uint32), shape)
    h = _mix32(_mix32(index * jnp.uint32(0x9E3779B9) + k0) ^ k1)
    threshold = min(int(round(keep_prob * 2**32)), 2**32 - 1)
    return h < jnp.uint32(threshold)


class Dropout(nn.Module):
    """Inverted dropout (as ``flax.linen.Dropout``) with masks from :func:`keep_mask`.

    Same contract as ``nn.Dropout``: active only with ``deterministic=False``, key from
    ``make_rng("dropout")`` (one per call), kept values scaled by ``1 / (1 - rate)``. Only the bit
    generator differs (a keyed hash instead of threefry): the distribution of the masks is the same.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, index: jax.Array | None = None,
                 rows: "PackedRows | None" = None, attention: bool = False) -> jax.Array:
        """``rows``: ``x`` holds packed rows, [n, W, F] activations (or, with ``attention``, [n, H, W, W]
        attention weights): each element's mask comes from its own row's key and its position in that row
        (`PackedRows.hidden_mask_args` / `attention_mask_args`), not from the packing."""
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        key = self.make_rng("dropout")
        if rows is not None:
            key, index = (rows.attention_mask_args if attention else rows.hidden_mask_args)(key, x.shape)
        keep = keep_mask(key, x.shape, keep_prob, index)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))

    def draw_key(self) -> jax.Array:
        """The key one ``__call__`` would draw (the same ``make_rng`` stream and count), for callers that
        apply this dropout themselves (`dot_product_attention`: its mask is recomputed in the backward pass)."""
        return self.make_rng("dropout")


def key_words(key: jax.Array) -> jax.Array:
    """uint32 key data (typed key or raw), its words on the last axis."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key.astype(jnp.uint32)


def row_keyed(module_key: jax.Array, row_keys: jax.Array) -> jax.Array:
    """[..., 2] uint32: a module's dropout key (one `make_rng` draw) mixed with each row's key data
    ``row_keys`` [..., words]: distinct rows get unrelated masks from one module, whatever rows they share
    a packed row with."""
    m, r = key_words(module_key), key_words(row_keys)
    k0 = _mix32(m[..., 0] ^ r[..., 0])
    k1 = _mix32(m[..., -1] ^ _mix32(r[..., -1] + jnp.uint32(0x9E3779B9)))
    return jnp.stack([k0, k1], axis=-1)


@struct.dataclass
class PackedRows:
    """Several rows packed into each input row (docs/METHOD.md, "Packed rows"). The encoder's
    ``attention_mask`` then names the row each token belongs to (1..``num_slots``; 0 = padding): attention
    stays within a row, positions count from each row's start, and the encoder returns one embedding per
    slot, [n, ``num_slots``, dim].

    positions: [n, W] int32, each token's position within its own row.
    keys: [n, W, words] uint32, each token's row's dropout key data (`reencode.row_keys`).
    num_slots: static, the most rows one input row holds.
    """

    positions: jax.Array
    keys: jax.Array
    num_slots: int = struct.field(pytree_node=False)

    def hidden_mask_args(self, module_key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """(key, index) of `keep_mask` for [n, W, F] activations: element (t, f) of a row at index
        ``t * F + f`` (its row-major index had the row been encoded alone) under its row's key."""
        features = shape[-1]
        index = self.positions.astype(jnp.uint32)[..., None] * jnp.uint32(features) + jax.lax.iota(jnp.uint32, features)
        return row_keyed(module_key, self.keys[:, :, None, :]), index

    def attention_mask_args(self, module_key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """(key, index) for attention weights [n, H, W, W]: element (h, q, k) of a row at
        `attention_index`'s index of (0, h, q's position, k's position), under the query's row's key
        (a key of another row is masked out anyway)."""
        _, heads, _, _ = shape
        s = jnp.uint32(ATTENTION_INDEX_STRIDE)
        pos = self.positions.astype(jnp.uint32)
        h = jax.lax.broadcasted_iota(jnp.uint32, (1, heads, 1, 1), 1)
        index = (h * s + pos[:, None, :, None]) * s + pos[:, None, None, :]
        return row_keyed(module_key, self.keys[:, None, :, None, :]), index

    def attention_bias(self, segments: jax.Array) -> jax.Array:
        """[n, 1, W, W] additive bias: a token attends to the tokens of its own row only (padding to padding,
        so that no query is without keys)."""
        same = segments[:, :, None] == segments[:, None, :]
        return jnp.where(same, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)[:, None]

    def pool(self, hidden: jax.Array, segments: jax.Array, how: str) -> jax.Array:
        """[n, W, d] -> [n, num_slots, d] float32: each row's first token ("first") or the mean over its
        tokens ("mean"). Empty slots are ones, not zeros: the L2 norm's gradient is finite there (their
        embeddings are never read)."""
        slot = jnp.arange(1, self.num_slots + 1, dtype=segments.dtype)
        member = (segments[:, :, None] == slot).astype(jnp.float32)  # [n, W, S]
        count = jnp.sum(member, axis=1)[..., None]  # [n, S, 1]
        if how == "first":
            weights = member * (self.positions == 0).astype(jnp.float32)[:, :, None]
        else:
            weights = member / jnp.maximum(count.swapaxes(1, 2), 1e-9)
        pooled = jnp.einsum("nws,nwd->nsd", weights, hidden.astype(jnp.float32))
        return jnp.where(count > 0, pooled, jnp.float32(1))


# Names of an encoder's blocks: unrolled children ("layer_{i}") or the one scanned child with stacked
# parameters ("layers"). hf.py's conversion reads the same table.
LAYER_NAMES = {"bert": ("layer_{i}", "layers"), "t5": ("block_{i}", "blocks")}


def layer_stack(block_cls: type[nn.Module], config: Any, dtype: Any, num_layers: int, x: jax.Array,
                bias: jax.Array, deterministic: bool, *, family: str, remat: bool = False,
                scan: bool = False, rows: PackedRows | None = None) -> jax.Array:
    """`num_layers` blocks ``block_cls(config, dtype)`` applied to `x`, from inside the encoder's compact
    ``__call__``, named by ``LAYER_NAMES[family]``; `remat` rematerialises each block in the backward pass.

    Unrolled: one child per block. Scanned (`scan`): one ``nn.scan`` child (the block's ``__call__``
    returns ``(x, None)`` with ``scanned=True``), parameters stacked on a leading layer axis, a dropout key
    per layer, the bias and `deterministic` broadcast: XLA compiles the block once instead of
    `num_layers` times (as maxtext and t5x scan their layers). ``rows``: `x` holds packed rows (passed to
    every block's dropout).
    """
    unrolled, stacked = LAYER_NAMES[family]
    cls = nn.remat(block_cls, static_argnums=(3,)) if remat else block_cls
    if scan:
        scanned = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=num_layers)
        x, _ = scanned(config, dtype, scanned=True, name=stacked)(x, bias, deterministic, rows)
        return x
    for i in range(num_layers):
        x = cls(config, dtype, name=unrolled.format(i=i))(x, bias, deterministic, rows)
    return x


def attention_bias(attention_mask: jax.Array) -> jax.Array:
    """[n, L] mask (1 = real token) -> additive [n, 1, 1, L] bias that removes padded keys."""
    mask = attention_mask.astype(bool)[:, None, None, :]
    return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def masked_mean(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean over real tokens ([n, L, d] -> [n, d]), as sentence-transformers computes it."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    # sentence-transformers clamps the count at 1e-9.
    return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Row-wise L2 normalisation in float32, matching torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[n, L, H*dh] -> [n, L, H, dh]."""
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def merge_heads(x: jax.Array) -> jax.Array:
    """[n, L, H, dh] -> [n, L, H*dh]."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


# Position stride of the attention-dropout index: element (n, h, q, k) is ((n*H + h)*S + q)*S + k, so a
# row's mask over its real tokens is the same whatever its padded length (the length-aware step encodes
# a row at a bucket length, the padded step at the cap). Wraps (harmlessly) past 2**32.
ATTENTION_INDEX_STRIDE = 1024


def attention_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 dropout index of attention weights [n, H, Lq, Lk], independent of the lengths (< stride)."""
    n, h, lq, lk = shape
    s = jnp.uint32(ATTENTION_INDEX_STRIDE)
    rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(h) + jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    return (rows * s + jax.lax.broadcasted_iota(jnp.uint32, shape, 2)) * s + jax.lax.broadcasted_iota(jnp.uint32, shape, 3)


# How attention keeps its probabilities for the backward pass: "autodiff" (JAX's autodiff of softmax and
# dropout: float32 probabilities, the mask and the float32 dropped weights, 9-11 bytes per element),
# "float32" (`attention_core`: float32 probabilities and the mask, 5 bytes) or "compute" (`attention_core`
# with the probabilities in the compute dtype: 3 bytes with bfloat16).
ATTENTION_PROBS = ("autodiff", "float32", "compute")


def check_attention_probs(choice: str) -> str:
    if choice not in ATTENTION_PROBS:
        raise ValueError(f"attention_probs={choice!r} is not one of {ATTENTION_PROBS}: \"autodiff\" (the "
                         "default) lets JAX keep what softmax and dropout need, \"float32\" / \"compute\" keep only "
                         "the probabilities (in float32 / in the compute dtype) and the dropout mask.")
    return choice


def _attention_keep(key: jax.Array, shape: tuple[int, ...], keep_prob: float,
                    index: jax.Array | None = None) -> jax.Array | None:
    """`Dropout`'s mask for attention weights of ``shape`` at ``index`` (default `attention_index`; None when
    ``keep_prob`` is 1: no dropout)."""
    if keep_prob >= 1.0:
        return None
    return keep_mask(key, shape, keep_prob, attention_index(shape) if index is None else index)


def _dropped(y: jax.Array, keep: jax.Array | None, keep_prob: float, dtype: Any) -> jax.Array:
    """Probabilities ``y`` after inverted dropout with ``keep`` (None: none), in ``dtype``."""
    if keep is not None:
        y = jnp.where(keep, y / jnp.asarray(keep_prob, y.dtype), jnp.zeros_like(y))
    return y.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def attention_core(logits: jax.Array, vh: jax.Array, key: jax.Array, keep_prob: float, probs_dtype: Any,
                   index: jax.Array | None = None) -> jax.Array:
    """``dropout(softmax(logits)) @ vh`` over [n, H, Lq, Lk] float32 logits and [n, H, Lk, dh] values: the
    same values as `Dropout` applied to ``softmax(logits).astype(probs_dtype)`` at `attention_index`, cast
    to the values' dtype, times the values.

    The backward pass keeps the probabilities (in ``probs_dtype``), the dropout mask and the values, and
    recomputes the dropped weights from them. Plain autodiff keeps, per attention element, the float32
    probabilities, the mask, the float32 dropped weights and (with bfloat16 values) their bfloat16 copy:
    9 to 11 bytes, where this keeps 5 (3 with bfloat16 ``probs_dtype``). (Recomputing the mask from ``key``
    instead, 4 and 2 bytes, ran 4-5% slower on CPU: the hash is about 10 integer operations per element.)
    The gradient through the softmax is computed in float32. ``keep_prob`` 1: no dropout (``key`` unread).
    ``key`` and ``index``: as `_attention_keep`'s (packed rows: per element, `PackedRows.attention_mask_args`).
    """
    return _attention_core_fwd(logits, vh, key, keep_prob, probs_dtype, index)[0]


def _attention_core_fwd(logits, vh, key, keep_prob, probs_dtype, index=None):
    y = jax.nn.softmax(logits, axis=-1).astype(probs_dtype)
    keep = _attention_keep(key, y.shape, keep_prob, index)
    out = jnp.einsum("nhqk,nhkd->nhqd", _dropped(y, keep, keep_prob, vh.dtype), vh)
    return out, (y, vh, keep)


def _attention_core_bwd(keep_prob, probs_dtype, res, g):
    y, vh, keep = res
    g = g.astype(vh.dtype)
    d_vh = jnp.einsum("nhqk,nhqd->nhkd", _dropped(y, keep, keep_prob, vh.dtype), g)
    d_weights = jnp.einsum("nhqd,nhkd->nhqk", g, vh, preferred_element_type=jnp.float32)
    if keep is not None:
        d_weights = jnp.where(keep, d_weights / jnp.float32(keep_prob), jnp.float32(0))
    y32 = y.astype(jnp.float32)
    d_logits = y32 * (d_weights - jnp.sum(d_weights * y32, axis=-1, keepdims=True))
    return d_logits, d_vh, None, None


attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    dropout: Dropout,
    deterministic: bool,
    probs: str = "autodiff",
    rows: PackedRows | None = None,
) -> jax.Array:
    """Softmax attention over [n, L, H, dh] heads; the logits and softmax are in float32.

    `bias` is broadcast to [n, H, Lq, Lk] (mask, and for T5 the relative position bias). No scaling is
    applied here: callers scale q themselves when their model does (BERT does, T5 does not).
    `probs`: how the backward pass keeps the probabilities (`ATTENTION_PROBS`; "compute" = ``v``'s dtype);
    they meet ``v`` in its dtype either way. ``rows``: the inputs are packed rows (dropout per row; the
    bias keeps attention within a row).
    """
    # Head-major operands ([n, H, L, dh]) before the two batched matmuls: XLA:CPU emits them as plain
    # batch-major GEMMs then (measured on MiniLM's shapes, 64 rows x 64 tokens, one thread: forward 40%
    # and forward + backward 15% faster than contracting the [n, L, H, dh] layout directly).
    qh, kh, vh = (jnp.swapaxes(t, -3, -2) for t in (q, k, v))
    logits = jnp.einsum("nhqd,nhkd->nhqk", qh, kh, preferred_element_type=jnp.float32) + bias
    if check_attention_probs(probs) == "autodiff" or not isinstance(dropout, Dropout):
        # Plain autodiff (also for another dropout module, e.g. flax.linen.Dropout).
        weights = jax.nn.softmax(logits, axis=-1)
        if isinstance(dropout, Dropout) and not deterministic:
            weights = dropout(weights, deterministic=deterministic, rows=rows, attention=True,
                              index=None if rows is not None else attention_index(weights.shape))
        elif rows is not None and not deterministic and dropout.rate > 0.0:
            raise ValueError("layers.py: packed rows need this package's Dropout (masks drawn per row), "
                             f"got {type(dropout).__name__}")
        else:
            weights = dropout(weights, deterministic=deterministic)
        return jnp.swapaxes(jnp.einsum("nhqk,nhkd->nhqd", weights.astype(v.dtype), vh), -3, -2)
    probs_dtype = jnp.dtype(jnp.float32 if probs == "float32" else v.dtype)
    if deterministic or dropout.rate == 0.0:
        key, keep_prob = jnp.zeros((2,), jnp.uint32), 1.0
    elif dropout.rate >= 1.0:
        return jnp.zeros_like(q)
    else:
        key, keep_prob = dropout.draw_key(), 1.0 - dropout.rate
        if rows is not None:
            key, index = rows.attention_mask_args(key, logits.shape)
            return jnp.swapaxes(attention_core(logits, vh, key, keep_prob, probs_dtype, index), -3, -2)
        key = key_words(key)
    return jnp.swapaxes(attention_core(logits, vh, key, keep_prob, probs_dtype), -3, -2)

