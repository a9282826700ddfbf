"""Flax BERT / RoBERTa encoder with pooling: BERT, MiniLM, RoBERTa, CodeBERT, GraphCodeBERT, UniXcoder.

Follows Hugging Face `BertModel` / `RobertaModel` numerically (post-layer-norm blocks, logits scaled by
1/sqrt(head_dim), GELU with erf by default). The two families differ only in position ids: BERT counts
from 0; RoBERTa counts real tokens from pad_id + 1 and gives padding the pad id as its position.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cocohanere_jax.models import layers

POOLINGS = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-family encoder (names as in Hugging Face `config.json`)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    # RoBERTa family: positions start at pad_token_id + 1 and padding gets position pad_token_id.
    roberta_positions: bool = False
    # "cls": hidden state of token 0; "mean": mean over non-pad tokens; "pooler": token 0 through the
    # pretrained dense+tanh pooler (the first-token-plus-projection head of GraphCodeBERT's code search).
    pooling: str = "cls"
    # Not an architecture field (never exported): how attention keeps its probabilities for the backward
    # pass, `layers.ATTENTION_PROBS`.
    attention_probs: str = "autodiff"

    @property
    def output_dim(self) -> int:
        return self.hidden_size


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def position_ids(input_ids: jax.Array, config: BertConfig, rows: layers.PackedRows | None = None,
                 segments: jax.Array | None = None) -> jax.Array:
    """Absolute position ids, BERT or RoBERTa style (packed ``rows``: counted from each row's start)."""
    if rows is not None:
        if config.roberta_positions:
            return jnp.where(segments != 0, rows.positions + config.pad_token_id + 1, config.pad_token_id)
        return rows.positions.astype(jnp.int32)
    if config.roberta_positions:
        real = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (HF keeps it in the parameter dtype, float32)."""

    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=self.epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name="norm")(
            x.astype(jnp.float32)
        )
        return y.astype(self.dtype)


class BertLayer(nn.Module):
    """Self-attention then feed-forward, each followed by residual + LayerNorm (post-norm)."""

    config: BertConfig
    dtype: Any = jnp.float32
    scanned: bool = False  # the body of a scanned `layers.layer_stack`: returns (x, None)

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool,
                 rows: layers.PackedRows | None = None) -> jax.Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        dense = lambda n, name: layers.Dense(n, dtype=self.dtype, name=name)  # noqa: E731
        hidden_drop = layers.Dropout(cfg.hidden_dropout_prob)

        q = layers.split_heads(dense(cfg.hidden_size, "query")(x), heads) / jnp.asarray(
            math.sqrt(head_dim), self.dtype
        )
        k = layers.split_heads(dense(cfg.hidden_size, "key")(x), heads)
        v = layers.split_heads(dense(cfg.hidden_size, "value")(x), heads)
        attn = layers.dot_product_attention(
            q, k, v, bias, layers.Dropout(cfg.attention_probs_dropout_prob), deterministic,
            probs=cfg.attention_probs, rows=rows,
        )
        h = hidden_drop(dense(cfg.hidden_size, "attention_out")(layers.merge_heads(attn)), deterministic=deterministic,
                        rows=rows)
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, name="attention_norm")(x + h)

        h = _ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, "intermediate")(x))
        h = hidden_drop(dense(cfg.hidden_size, "output")(h), deterministic=deterministic, rows=rows)
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, name="output_norm")(x + h)
        return (x, None) if self.scanned else x


class BertEncoder(nn.Module):
    """BERT/RoBERTa encoder with pooling; returns unit-norm rows [n, hidden_size].

    Attributes:
      config: the architecture and pooling.
      dtype: compute dtype (parameters stay float32).
      remat: rematerialise each layer in the backward pass.
      scan_layers: run the layers as one `nn.scan` over stacked parameters (`layers/...`, leading axis
        = layer) instead of unrolling them: XLA compiles one layer instead of `num_hidden_layers`. Same
        function; the Hugging Face conversion stacks / unstacks the layers (`hf.py`).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    supports_packing = True  # takes packed rows (`layers.PackedRows`, `reencode.encode_rows_packed`)

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True,
        rows: layers.PackedRows | None = None,
    ) -> jax.Array:
        """[n, L] ids and mask -> [n, hidden_size] unit rows; with packed ``rows`` the mask names each token's
        row (`layers.PackedRows`) and the result is [n, rows.num_slots, hidden_size]."""
        cfg = self.config
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"BERT pooling {cfg.pooling!r} is not one of {POOLINGS}.")
        embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids(input_ids, cfg, rows, attention_mask))
            + embed(cfg.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(input_ids))
        )
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, name="embeddings_norm")(x)
        x = layers.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic, rows=rows)

        bias = layers.attention_bias(attention_mask) if rows is None else rows.attention_bias(attention_mask)
        x = layers.layer_stack(BertLayer, cfg, self.dtype, cfg.num_hidden_layers, x, bias, deterministic,
                               family="bert", remat=self.remat, scan=self.scan_layers, rows=rows)

        if rows is not None:
            pooled = rows.pool(x, attention_mask, "mean" if cfg.pooling == "mean" else "first").astype(self.dtype)
        elif cfg.pooling == "mean":
            pooled = layers.masked_mean(x, attention_mask)
        else:
            pooled = x[:, 0, :]
        if cfg.pooling == "pooler":
            pooled = jnp.tanh(layers.Dense(cfg.hidden_size, dtype=self.dtype, name="pooler")(pooled))
        return layers.l2_normalize(pooled)
