"""Label masks for code-to-code training (POJ-104, BigCloneBench, code groups): the uni-modal version of the
DataID and duplicate masks.

In code-to-code training a pair is (anchor code, positive code) drawn from one group of clones, and every
program carries the label of its group (POJ-104: the problem it solves). Any candidate with the anchor's
label is another correct answer, so it must never be used as a negative:

* bank candidates (kNN over the one code bank): `label_keep` / `bank_label_keep` give the [n, M] ``keep``
  that `cocohanere_jax.bank.search` takes (AND it with the other keeps);
* the in-batch loss: `in_batch_label_keep` gives the [n, m] ``negative_mask`` of
  `cocohanere_jax.losses.bimodal_loss` / `info_nce_rows`: the positive stays in the softmax, every other
  same-label column leaves the denominator.

Convention as in `bank.py` and `losses.py`: boolean, ``True`` = usable as a negative. A label < 0 means
"no candidate" (an empty bank slot, DataID -1): never kept. All functions are pure ``jnp`` and shape-generic,
so they run inside the jitted, shard_map'ed step (with global labels gathered like the DataIDs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

NO_LABEL = -1


def lookup_labels(label_table: Array, data_ids: Array) -> Array:
    """int32, the shape of ``data_ids``: ``label_table[data_ids]``, and ``NO_LABEL`` where ``data_ids < 0``.

    Args:
      label_table: [N] int32 label of each DataID (e.g. ``LabelledCodes.positive_pairs()[1]``).
      data_ids: int DataIDs of any shape (-1 = empty bank slot).
    """
    n = label_table.shape[0]
    safe = jnp.clip(data_ids, 0, n - 1)
    return jnp.where(data_ids >= 0, label_table[safe], NO_LABEL).astype(jnp.int32)


def label_keep(candidate_labels: Array, anchor_labels: Array) -> Array:
    """[n, M] bool: True where a candidate may be a negative of an anchor (it has a label, and another one).

    Args:
      candidate_labels: [M] int labels of the candidates shared by all anchors (the bank), or [n, M] per
        anchor (e.g. the labels of each anchor's retrieved top-k); ``< 0`` = no candidate.
      anchor_labels: [n] int labels of the anchors.
    """
    cand = candidate_labels if candidate_labels.ndim == 2 else candidate_labels[None, :]
    return (cand >= 0) & (cand != anchor_labels[:, None])


def bank_label_keep(bank_ids: Array, anchor_ids: Array, label_table: Array) -> Array:
    """[n, M] bool keep for `bank.search`: False where the bank slot holds a program of the anchor's label
    (and for empty slots).

    Args:
      bank_ids: [M] int32 DataIDs in the bank (-1 = empty).
      anchor_ids: [n] int32 DataIDs of the anchors.
      label_table: [N] int32 label per DataID.
    """
    return label_keep(lookup_labels(label_table, bank_ids), lookup_labels(label_table, anchor_ids))


def in_batch_label_keep(anchor_labels: Array, candidate_labels: Array | None = None,
                        positive_index: Array | None = None) -> Array:
    """[n, m] bool ``negative_mask`` for the in-batch InfoNCE: ``keep[i, j]`` is True for the positive
    ``j == positive_index[i]`` and for every candidate of another label; other same-label candidates are
    removed from the softmax denominator.

    Args:
      anchor_labels: [n] int labels of the anchors (local rows).
      candidate_labels: [m] int labels of the in-batch candidates (default: ``anchor_labels``, the square
        single-device case; with data parallelism, the gathered global batch).
      positive_index: [n] int column of each anchor's positive (default ``arange(n)``; with data
        parallelism ``device_offset + arange(n)``).
    """
    cand = anchor_labels if candidate_labels is None else candidate_labels
    n, m = anchor_labels.shape[0], cand.shape[0]
    pos = jnp.arange(n) if positive_index is None else positive_index
    is_positive = jnp.arange(m)[None, :] == pos[:, None]
    return is_positive | ((cand[None, :] != anchor_labels[:, None]) & (cand[None, :] >= 0))


def count_same_label(keep: Array, valid: Array | None = None) -> Array:
    """int32 scalar: candidates dropped by a label keep (a metric for the step: how many false negatives a
    label mask removed). ``valid`` (same shape) restricts the count to real candidates."""
    dropped = ~keep if valid is None else (~keep & valid)
    return jnp.sum(dropped, dtype=jnp.int32)
