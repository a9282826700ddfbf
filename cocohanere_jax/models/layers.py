"""Pieces shared by the encoders: dense layers in a compute dtype, attention masks, pooling, L2 norm."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Parameters live in float32; `dtype` is the compute dtype (float32 or bfloat16).
Dense = functools.partial(nn.Dense, param_dtype=jnp.float32)


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


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    dropout: nn.Dropout,
    deterministic: bool,
) -> jax.Array:
    """Softmax attention over [n, L, H, dh] heads; the logits and softmax are in float32.

    `bias` is broadcast to [n, H, Lq, Lk] (mask, and for T5 the relative position bias). No scaling is
    applied here: callers scale q themselves when their model does (BERT does, T5 does not).
    """
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1)
    weights = dropout(weights, deterministic=deterministic).astype(v.dtype)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, v)
