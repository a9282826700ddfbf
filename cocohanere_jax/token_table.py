"""The token table: every training row's token ids, real lengths and text hashes, by DataID.

Row ``i`` is DataID ``i``: the memory banks store DataIDs, and the step turns the DataIDs it retrieves
back into token rows through this table. One host object (`TokenTable`, numpy) with two views for the
jitted step:

* `DeviceTokenTable` (`TokenTable.device_view`), a pytree of device arrays, replicated, gathered by DataID
  inside the step (``token_table="device"``);
* the table itself as a host-callback view (``token_table="host"``): `lookup_rows` reaches
  `TokenTable.lookup` through ``jax.pure_callback``, for training sets whose token rows do not fit in
  device memory (the hashes and lengths, [N] int32 each, still live on the device).

`TokenTable.batch(ids)` and `TokenTable.batch_spec(...)` are the one definition of the step's batch:
``data_id`` [B] int32, ``query_ids`` [B, Lq] int32, ``code_ids`` [B, Lc] int32 (ids padded with the
encoder's pad id; the attention mask is ``ids != pad_id``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cocohanere_jax.input_pipeline import Tokenize, cached_tokenize

Array = jax.Array

__all__ = [
    "BATCH_KEYS", "TokenTable", "DeviceTokenTable", "lookup_rows", "text_hash", "build_token_table",
    "token_table_from_pairs",
]

BATCH_KEYS = ("data_id", "query_ids", "code_ids")


def _normalize(text: str) -> str:
    return " ".join(text.split())


def text_hash(texts: Sequence[str]) -> np.ndarray:
    """int32 [n]: a stable 32-bit hash (blake2b) of each whitespace-normalised text.

    Equal texts up to whitespace get equal hashes. Distinct texts collide with probability about
    n^2 / 2^33 per dataset (a handful in 250k rows); a collision only masks one extra negative.
    """
    out = np.empty(len(texts), dtype=np.int32)
    for i, t in enumerate(texts):
        d = hashlib.blake2b(_normalize(t).encode("utf-8"), digest_size=4).digest()
        out[i] = int.from_bytes(d, "little", signed=True)
    return out


class DeviceTokenTable(struct.PyTreeNode):
    """The device view of a `TokenTable` (replicated; row ``i`` belongs to DataID ``i``).

    ``query_ids`` / ``code_ids`` are present with ``token_table="device"`` and None with ``"host"``;
    the hashes are needed with ``mask_duplicates=True``; the lengths are the real (non-pad) token counts.
    """

    query_ids: Array | None = None  # [N, Lq] int32
    code_ids: Array | None = None  # [N, Lc] int32
    query_hash: Array | None = None  # [N] int32
    code_hash: Array | None = None  # [N] int32
    query_lengths: Array | None = None  # [N] int32
    code_lengths: Array | None = None  # [N] int32
    groups: Array | None = None  # [N] int32 group of each DataID (its language); step.negatives_in_group


@dataclasses.dataclass(frozen=True, eq=False)
class TokenTable:
    """Token rows of the training set on the host; row ``i`` is DataID ``i``.

    The hashes are optional (None: duplicate masking is unavailable); the lengths are derived from the
    ids and ``pad_id``.
    """

    query_ids: np.ndarray  # int32 [N, Lq]
    code_ids: np.ndarray  # int32 [N, Lc]
    query_hash: np.ndarray | None = None  # int32 [N], hash of the whitespace-normalised query
    code_hash: np.ndarray | None = None  # int32 [N], hash of the whitespace-normalised code
    fingerprint: str = ""  # the tokenizer's (cache key of the token arrays)
    pad_id: int = 0
    groups: np.ndarray | None = None  # int32 [N]: group of each DataID (e.g. its language), for step.negatives_in_group
    query_lengths: np.ndarray = dataclasses.field(init=False, repr=False)  # int32 [N], real tokens
    code_lengths: np.ndarray = dataclasses.field(init=False, repr=False)  # int32 [N]

    def __post_init__(self):
        for name in ("query_ids", "code_ids", "query_hash", "code_hash", "groups"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"TokenTable.{name}: dtype {value.dtype}; need integer ids / hashes")
            object.__setattr__(self, name, value.astype(np.int32, copy=False))
        n = self.query_ids.shape[0]
        if self.query_ids.ndim != 2 or self.code_ids.ndim != 2:
            raise ValueError(f"TokenTable: query_ids and code_ids must be [N, L], got shapes "
                             f"{self.query_ids.shape} and {self.code_ids.shape}")
        for name in ("code_ids", "query_hash", "code_hash", "groups"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"TokenTable.{name} has {value.shape[0]} rows, query_ids {n}: one row per DataID")
        object.__setattr__(self, "query_lengths", np.sum(self.query_ids != self.pad_id, axis=1, dtype=np.int32))
        object.__setattr__(self, "code_lengths", np.sum(self.code_ids != self.pad_id, axis=1, dtype=np.int32))

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    @property
    def query_length(self) -> int:
        return self.query_ids.shape[1]

    @property
    def code_length(self) -> int:
        return self.code_ids.shape[1]

    def _check(self, data_ids) -> np.ndarray:
        ids = np.asarray(data_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"DataIDs must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"DataIDs outside [0, {len(self)}): min {ids.min()}, max {ids.max()}; the token "
                             "table and the DataIDs (batch or bank) disagree")
        return ids

    def lookup(self, which: str, data_ids) -> np.ndarray:
        """Rows of ``which`` ("query" or "code") for DataIDs of any shape: [..., L] int32."""
        return (self.query_ids if which == "query" else self.code_ids)[self._check(data_ids)]

    def rows(self, data_ids) -> tuple[np.ndarray, np.ndarray]:
        """(query_ids[ids], code_ids[ids]) for valid DataIDs (negative ids raise: mask them first)."""
        return self.lookup("query", data_ids), self.lookup("code", data_ids)

    def batch(self, data_ids, token_rows: bool = True) -> dict[str, np.ndarray]:
        """The step's batch for these DataIDs (host arrays; `sharding.shard_batch` places them).

        ``token_rows=False``: DataIDs only (with ``token_table="device"`` the step gathers the rows itself).
        """
        ids = self._check(data_ids).astype(np.int32)
        if not token_rows:
            return {"data_id": ids}
        query_ids, code_ids = self.rows(ids)
        return {"data_id": ids, "query_ids": query_ids, "code_ids": code_ids}

    def batch_spec(self, global_batch: int, sharding: Any = None,
                   token_rows: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a global batch (for ``jit(...).lower``), optionally with its sharding."""
        shapes = {"data_id": (global_batch,), "query_ids": (global_batch, self.query_length),
                  "code_ids": (global_batch, self.code_length)}
        names = BATCH_KEYS if token_rows else ("data_id",)
        return {name: jax.ShapeDtypeStruct(shapes[name], jnp.int32, sharding=sharding) for name in names}

    def device_view(self, token_table: str = "device") -> DeviceTokenTable:
        """The arrays the step reads on the device (host numpy; place with `sharding.replicate`).

        With ``token_table="host"`` the token rows stay here and are fetched by `lookup_rows`.
        """
        if token_table not in ("device", "host"):
            raise ValueError(f'token_table={token_table!r}; use "device" or "host"')
        on_device = token_table == "device"
        return DeviceTokenTable(
            query_ids=self.query_ids if on_device else None, code_ids=self.code_ids if on_device else None,
            query_hash=self.query_hash, code_hash=self.code_hash,
            query_lengths=self.query_lengths, code_lengths=self.code_lengths, groups=self.groups,
        )


def lookup_rows(which: str, ids: Array, table: DeviceTokenTable, host_table: TokenTable | None,
                axis_name: str | None) -> Array:
    """Token rows [..., L] of DataIDs ``ids`` [...], from the device view or, without one, the host table.

    Inside ``shard_map`` (``axis_name`` set) the host rows are typed device-varying: each device looked
    up its own anchors' neighbours.
    """
    rows = table.query_ids if which == "query" else table.code_ids
    if rows is not None:
        return rows[ids]
    if host_table is None:
        raise ValueError(f'token_table.py: no {which} token rows on the device and no host table; use '
                         'TokenTable.device_view("device"), or token_table="host" with '
                         'make_train_step(..., host_table=<the TokenTable>).')
    width = host_table.query_length if which == "query" else host_table.code_length
    out = jax.pure_callback(
        functools.partial(host_table.lookup, which),
        jax.ShapeDtypeStruct(ids.shape + (width,), jnp.int32),
        ids,
        vmap_method="sequential",
    )
    if axis_name is not None:
        # The callback's result is typed device-invariant, but each device looked up its own anchors'
        # neighbours: type it as what it is. (Were the parameters left invariant, an invariant row
        # through the encoder would make autodiff psum the cotangents of different rows together.)
        out = jax.lax.pcast(out, axis_name, to="varying")
    return out


def build_token_table(queries: Sequence[str], codes: Sequence[str], tokenize: Tokenize, fingerprint: str,
                      query_length: int = 128, code_length: int = 256,
                      cache_dir: str | os.PathLike | None = None, *, pad_id: int = 0,
                      chunk_size: int = 4096) -> TokenTable:
    """Tokenises the training set (row i = DataID i) through `tokenize`, cached in `cache_dir`."""
    if len(queries) != len(codes):
        raise ValueError(f"{len(queries)} queries but {len(codes)} codes")
    if not queries:
        raise ValueError("build_token_table: empty training set")
    q = cached_tokenize(queries, tokenize, fingerprint, query_length, cache_dir, name="query", chunk_size=chunk_size)
    c = cached_tokenize(codes, tokenize, fingerprint, code_length, cache_dir, name="code", chunk_size=chunk_size)
    return TokenTable(q, c, text_hash(queries), text_hash(codes), fingerprint, pad_id)


def token_table_from_pairs(pairs, tokenize: Tokenize, fingerprint: str, query_length: int = 128,
                           code_length: int = 256, cache_dir: str | os.PathLike | None = None, *,
                           pad_id: int = 0) -> TokenTable:
    """`build_token_table` for a `cocohanere_data.records.Pairs` (whose data_id is the row index)."""
    return build_token_table(pairs.queries, pairs.codes, tokenize, fingerprint, query_length, code_length,
                             cache_dir, pad_id=pad_id)
