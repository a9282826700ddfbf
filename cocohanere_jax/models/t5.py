"""Flax T5 encoder and the CodeT5+ embedding head.

Follows the Hugging Face PyTorch `T5EncoderModel` and Salesforce's `codet5p-110m-embedding` numerically:
RMS layer norm without bias or mean subtraction, attention logits without 1/sqrt(d) scaling, a
bidirectional bucketed relative position bias computed once (the weights live in block 0 in HF) and
shared by every block, ReLU (or gated-GELU) feed-forward, final norm, dropout everywhere HF has it.
The CodeT5+ head pools token 0, projects d_model -> embed_dim with bias and L2-normalises.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cocohanere_jax.models import layers


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder (names as in Hugging Face `config.json`)."""

    vocab_size: int = 32103
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu", "gelu", "gated-gelu", "gated-silu", ...
    pad_token_id: int = 0
    # CodeT5+ embedding head: Linear(d_model -> embed_dim) on token 0. None = no projection head.
    embed_dim: int | None = 256
    # "first" (token 0; CodeT5+), "mean" (masked mean) or "cls" (alias of first).
    pooling: str = "first"
    # Not an architecture field (never exported): how attention keeps its probabilities for the backward
    # pass, `layers.ATTENTION_PROBS`.
    attention_probs: str = "autodiff"

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        # As in HF T5Config: "gated-gelu" means the tanh approximation, for backwards compatibility.
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def output_dim(self) -> int:
        return self.embed_dim if self.embed_dim else self.d_model


_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of (key - query) for every pair: int32 [length, length].

    Computed with numpy at trace time (it depends only on the static length), with the float32 log that
    the PyTorch reference uses, so the buckets agree exactly.
    """
    pos = np.arange(length, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]
    num_buckets //= 2
    buckets = (rel > 0).astype(np.int64) * num_buckets
    rel = np.abs(rel)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # np.maximum only keeps log() finite where is_small picks the exact bucket anyway.
    scaled = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact)
    )
    large = max_exact + (scaled * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(is_small, rel, large)
    return buckets.astype(np.int32)


def relative_distance_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 [2 * length - 1]: the bucket of each distance key - query = d - (length - 1), d = 0..2L-2,
    read from `relative_position_buckets` (so the two agree exactly)."""
    grid = relative_position_buckets(length, num_buckets, max_distance)
    return np.concatenate([grid[length - 1, :], grid[0, 1:]]).astype(np.int32)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, variance of the raw values, computed in float32."""

    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (x32 * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


class T5Block(nn.Module):
    """Self-attention sub-layer then feed-forward sub-layer, each pre-normed and residual."""

    config: T5Config
    dtype: Any = jnp.float32
    scanned: bool = False  # the body of a scanned `layers.layer_stack`: returns (x, None)

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool,
                 rows: layers.PackedRows | None = None) -> jax.Array:
        cfg = self.config
        inner = cfg.num_heads * cfg.d_kv
        dense = lambda n, name: layers.Dense(n, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        dropout = layers.Dropout(cfg.dropout_rate)
        drop = functools.partial(dropout, rows=rows)

        h = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="attention_norm")(x)
        q, k, v = (layers.split_heads(dense(inner, n)(h), cfg.num_heads) for n in ("query", "key", "value"))
        # T5 does not scale the logits by 1/sqrt(d_kv): the scale is folded into the initialisation.
        attn = layers.dot_product_attention(
            q, k, v, bias, dropout, deterministic,
            probs=cfg.attention_probs, rows=rows)
        x = x + drop(dense(cfg.d_model, "out")(layers.merge_heads(attn)), deterministic=deterministic)

        h = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="mlp_norm")(x)
        act = _ACTIVATIONS[cfg.activation]
        if cfg.is_gated:
            h = act(dense(cfg.d_ff, "wi_0")(h)) * dense(cfg.d_ff, "wi_1")(h)
        else:
            h = act(dense(cfg.d_ff, "wi")(h))
        h = drop(h, deterministic=deterministic)
        x = x + drop(dense(cfg.d_model, "wo")(h), deterministic=deterministic)
        return (x, None) if self.scanned else x


class T5Encoder(nn.Module):
    """T5 encoder stack with pooling and (for CodeT5+) the projection head; returns unit-norm rows.

    Attributes:
      config: the architecture.
      dtype: compute dtype (parameters stay float32); bfloat16 halves activation memory.
      remat: rematerialise each block in the backward pass (activation memory ~ one block).
      scan_layers: run the blocks as one `nn.scan` over stacked parameters (`blocks/...`, leading axis
        = block): XLA compiles one block instead of `num_layers` (see `BertEncoder`).
    """

    config: T5Config
    dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    supports_packing = True  # takes packed rows (`layers.PackedRows`, `reencode.encode_rows_packed`)

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True,
        rows: layers.PackedRows | None = None,
    ) -> jax.Array:
        """[n, L] ids and mask -> [n, output_dim] unit rows; with packed ``rows`` the mask names each token's
        row (`layers.PackedRows`) and the result is [n, rows.num_slots, output_dim]."""
        cfg = self.config
        if cfg.pooling not in ("first", "cls", "mean"):
            raise ValueError(f"T5 pooling {cfg.pooling!r} is not one of 'first', 'cls', 'mean'.")
        length = input_ids.shape[1]
        x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, param_dtype=jnp.float32, name="shared")(
            input_ids
        )
        drop = functools.partial(layers.Dropout(cfg.dropout_rate), rows=rows)
        x = drop(x, deterministic=deterministic)

        # Relative position bias: one table (block 0's in HF), shared by every block.
        rel_bias = nn.Embed(
            cfg.relative_attention_num_buckets, cfg.num_heads, param_dtype=jnp.float32,
            name="relative_attention_bias",
        )
        if rows is None:
            buckets = relative_position_buckets(
                length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )
            rel = rel_bias(jnp.asarray(buckets))  # [L, L, H]
            bias = jnp.transpose(rel, (2, 0, 1))[None].astype(jnp.float32) + layers.attention_bias(attention_mask)
        else:  # each token's bucket from the positions within its own row
            by_distance = jnp.asarray(relative_distance_buckets(
                length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance))
            distance = rows.positions[:, None, :] - rows.positions[:, :, None] + (length - 1)  # key - query
            rel = rel_bias(by_distance[jnp.clip(distance, 0, 2 * length - 2)])  # [n, L, L, H]
            bias = jnp.transpose(rel, (0, 3, 1, 2)).astype(jnp.float32) + rows.attention_bias(attention_mask)

        x = layers.layer_stack(T5Block, cfg, self.dtype, cfg.num_layers, x, bias, deterministic,
                               family="t5", remat=self.remat, scan=self.scan_layers, rows=rows)
        x = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="final_norm")(x)
        x = drop(x, deterministic=deterministic)

        how = "mean" if cfg.pooling == "mean" else "first"
        if rows is not None:
            pooled = rows.pool(x, attention_mask, how).astype(self.dtype)
        elif how == "first":
            pooled = x[:, 0, :]
        else:
            pooled = layers.masked_mean(x, attention_mask)
        if cfg.embed_dim:
            pooled = layers.Dense(cfg.embed_dim, dtype=self.dtype, name="proj")(pooled)
        return layers.l2_normalize(pooled)
