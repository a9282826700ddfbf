"""`StepConfig`: the train step's options, their defaults and their validation (the one source).

`config.step` of every config file is generated from these fields (`config_dict`), so a default is
written once, here, and every field can be set from the command line (`--config.step.k=5`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

__all__ = ["StepConfig", "config_dict"]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Options of the train step. Hashable, so it can be closed over by the jitted step."""

    temperature: float = 0.05  # tau; docs/METHOD.md section 3 (UniXcoder uses 0.05, CoCoSoDa 0.07)
    k: int = 10  # hard negatives per anchor and direction
    bank_size: int = 8096  # M, slots per bank (paper: 8,096)
    knn: str = "bi"  # "bi": codes nearest each query, queries nearest each code; "uni": code->code, query->query
    bimodal_weight: float = 1.0  # weight of L^B; 0 = "w/o BCL" ablation
    hard_negative_weight: float = 1.0  # weight of L^HN; 0 = "w/o HNCL" (in-batch baseline, no search)
    mask_in_batch: bool = True  # never retrieve DataIDs of the current global batch
    mask_duplicates: bool = True  # mask same-text pairs (CodeSearchNet has many); needs the table's text hashes
    # Hard negatives only from the anchor's group (the table's `groups`: the language of each DataID when
    # several languages train together, cocohanere_jax/multilingual.py); in-batch negatives are unchanged.
    negatives_in_group: bool = False
    false_negative_margin: float | None = None  # drop candidates with score > pos + margin*|pos|; None = off
    # How the hard negatives enter the loss: "separate" = the paper's L^HN (anchor vs its positive and its
    # k negatives, weighted by hard_negative_weight); "joint" = they join L^B's softmax (each counts
    # hard_negative_weight in-batch negatives; L^B keeps the one positive term). docs/METHOD.md section 9.
    hard_negative_loss: str = "separate"
    # With "separate": L^HN trains each anchor only (the positive of each L^HN row is stop-gradient; it is
    # still pulled by L^B). In an InfoNCE row the positive's pull equals the negatives' pushes summed; with
    # stop-gradient negatives (bank, forward-only) the pushes are gone and the pull is not, which contracts
    # the space (docs/RESULTS.md, eighth round). Anchor-only keeps every force L^HN applies balanced.
    hard_negative_anchor_only: bool = False
    negative_gradient: bool = True  # False: stop-gradient on re-encoded negatives (ablation)
    token_table: str = "device"  # "device": TokenTable arrays; "host": HostTokenTable via pure_callback
    remat: bool = False  # jax.checkpoint each re-encoding chunk
    reencode_chunk: int = 0  # rows per re-encoding chunk; 0 = all n*k rows in one call
    # Length-aware encoding (reencode.encode_rows_bucketed): every row is encoded at the smallest of
    # `length_buckets` evenly spaced lengths per cap that holds it, in chunks of `length_chunk` rows (one
    # jax.lax.switch per chunk, inside the compiled step). 0 = every row padded to its cap (the authors' way).
    # Chosen by measurement (benchmarks/RESULTS.md, "Length-aware step").
    length_buckets: int = 4
    length_chunk: int = 8
    # With length_buckets > 0: pack several rows into each encoded row (reencode.encode_rows_packed:
    # first-fit decreasing on the device, attention within a row, positions from each row's start, one
    # pooled embedding per row; docs/METHOD.md "Packed rows"), then encode the packed rows in the bucketed
    # chunks. A chunk then runs at its fullest packed row's length instead of its longest row's, so a pool
    # of short and long rows is encoded at about its real tokens. Needs this package's BERT or T5 encoder.
    # Without dropout the step equals the padded one; with dropout each row's masks come from its own key,
    # the same on any number of devices, but not the masks of the unpacked step. Length plans are not used.
    length_pack: bool = False
    # With length_pack and the token table's length histogram (train.py passes it): the packed rows a pool
    # usually fills are encoded as one batch at the full width whose activations are kept for the backward
    # pass, and only the packed rows past them go through the chunks, whose backward pass runs their forward
    # again. How many: reencode.choose_packed_keep (the count with the least expected encoder work in a seeded
    # simulation of first-fit decreasing on pools drawn from the histogram, made when the step is traced).
    # A pool that fills more is still encoded exactly. Memory: the kept rows' activations. Off by default:
    # on CPU it is level with the chunks (CodeT5+ shape and MiniLM, batch 2 / 8, k 10, 128/256), in more
    # memory (benchmarks/RESULTS.md, "Packed rows with kept activations"); it is the packed path without
    # loops in the common case, for accelerators (not measured on one yet: benchmarks/run_gpu.sh pack).
    length_pack_keep: bool = False
    # Where the length-aware path runs: "cpu" (the default) = on CPU devices only, every row padded to its cap
    # on GPUs and TPUs; "all" = wherever `length_buckets` > 0. Measured: on CPU the length-aware step is
    # 1.2-1.7x the padded one; on an H200 (CodeT5+ 110M shape, batch 32, k 10, 128/256, bf16) the padded step
    # ran 2.9x faster than the bucketed chunks and 4.4x faster than the length plans (benchmarks/RESULTS.md,
    # "On a GPU"). TPUs were not measured; they run padded by this rule. `make_train_step` applies it to its
    # mesh's devices (`for_platform`).
    length_aware_on: str = "cpu"
    # With length_buckets > 0: encode each pool of rows whose lengths are well predicted by the token
    # table's length histogram (the tens of rows of a step at k 10) along a static plan made from it
    # (reencode.plan_lengths: rows sorted longest first, a few groups at fixed lengths, each group's
    # activations kept for the backward pass) instead of the bucketed chunks, whose backward pass runs every
    # chunk's forward again. A pool the plan does not hold (more long rows than the histogram predicts,
    # beyond `length_plan_margin` standard deviations) runs the bucketed chunks instead, and is counted in the
    # `length_plan_misses` metric. "auto": where the plan's work is expected below the bucketed chunks'
    # (small pools keep the chunks); "always"; "never" (memory bounded by one chunk's activations). Needs
    # the table's histogram (train.py passes it); without one the bucketed chunks run. Measured on CPU: the
    # CodeT5+ shape's step 1.21-1.23x faster, MiniLM's 0.97x on an AMD EPYC (benchmarks/RESULTS.md, "Length
    # plans"), 0.95x and at best level on an AVX-512 Xeon with a bank of real embeddings, so
    # "auto" here (the paper's model) and "never" in the MiniLM configs (configs/default.py, repo.py, registry.py).
    length_plan: str = "auto"
    # None: per pool, the margin of reencode.PLAN_MARGINS with the least expected work, a miss counted at the
    # bucketed chunks' expected work (reencode.choose_plan: a seeded simulation from the histogram when the
    # step is traced). It picks tight margins that miss often, and a miss costs more than that model counts
    # (MiniLM, CPU: steps with plans took 1.2-1.6x the chunks' time, benchmarks/RESULTS.md "Plans for real
    # neighbour pools"), so the default is a fixed 3 standard deviations at every boundary.
    length_plan_margin: float | None = 3.0
    # How alike in length the k re-encoded neighbours of one anchor are (0 = independent draws, 1 = all of
    # one length), for the plans of the negatives pools (reencode.plan_lengths' correlation): a plan made
    # for independent rows (the earlier default) broke on 21% of real pools of 80 neighbour codes (and as
    # many queries) and 56% of 320.
    # On real neighbour pools (the standard-library corpus, zero-shot MiniLM, k 10; benchmarks/RESULTS.md,
    # "Plans for real neighbour pools"), at 3 standard deviations, 0.25 cuts the share of pools that break
    # their plan from 9% / 21% / 56% (independent rows; pools of 20 / 80 / 320 codes and as many queries) to
    # 1.3% / 2.4% / 16%, for plans 7-18% larger.
    length_plan_correlation: float = 0.25
    # Re-encode each distinct retrieved DataID once per device and direction (the anchors that share a
    # neighbour share its embedding and gradient) instead of once per (anchor, rank).
    dedup_negatives: bool = False
    # With dedup_negatives: re-encode at most ceil(fraction * n_local * k) distinct rows per direction; the
    # rest (farthest ranks first) are masked out of L^HN and counted in the `dropped_negatives` metric.
    # 1.0 never drops; set it from the `distinct_negatives` metric of a run to save re-encoding.
    reencode_fraction: float = 1.0
    # Cost-aware hard negatives (docs/METHOD.md section 9). "Top-m re-encoding": of each anchor's k
    # neighbours only the `reencode_top` nearest are re-encoded with gradient (None = all k, the paper); the
    # others are `other_negatives`: "bank" = the embeddings their bank slots hold (no encoder work, no
    # gradient; reencode_top=0 makes every negative a bank embedding) or "fresh" = re-encoded forward-only
    # (no gradient through them; about a third of the encoder work of a re-encoding with gradient).
    reencode_top: int | None = None
    other_negatives: str = "bank"
    # Schedule: L^HN (bank search and re-encoding) only on steps s >= hard_negative_start with
    # (s - hard_negative_start) % hard_negative_every == 0; the other steps are in-batch steps of the same
    # compiled program (jax.lax.cond; the banks are still filled every step).
    hard_negative_start: int = 0
    hard_negative_every: int = 1
    # Neighbour batches (docs/METHOD.md section 9): the batch is made of groups of 1 + neighbour_pairs rows;
    # the group's first row is the anchor pair, and each other row is replaced by the *pair* of one of the
    # anchor's nearest codes in the code bank (nearest to its query; to its code with knn="uni"), re-encoded
    # with gradient as a full member of the batch. The hard negatives then sit inside L^B at the encoder cost
    # of an in-batch step. A row whose neighbour is missing (empty bank, masks) keeps the iterator's pair.
    # 0 = off. The per-device batch must divide by 1 + neighbour_pairs.
    neighbour_pairs: int = 0
    learning_rate: float = 3e-5
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    weight_decay_vectors: bool = True  # decay biases / norm scales too (torch AdamW(model.parameters()))
    warmup_steps: int = 0  # linear warmup before the linear decay; the paper uses none
    grad_clip: float | None = 1.0  # global-norm clip; None or 0 = off

    def __post_init__(self):
        def bad(field, value, fix):
            raise ValueError(f"step_config.py: StepConfig.{field}={value!r} is invalid; {fix}.")

        if not self.temperature > 0:
            bad("temperature", self.temperature, "use a positive temperature such as 0.05")
        if self.k < 1:
            bad("k", self.k, "use k >= 1")
        if self.bank_size < self.k:
            bad("bank_size", self.bank_size, f"use bank_size >= k (= {self.k})")
        if self.knn not in ("bi", "uni"):
            bad("knn", self.knn, 'use "bi" or "uni"')
        if self.token_table not in ("device", "host"):
            bad("token_table", self.token_table, 'use "device" or "host"')
        if self.bimodal_weight < 0 or self.hard_negative_weight < 0:
            bad("bimodal_weight/hard_negative_weight", (self.bimodal_weight, self.hard_negative_weight),
                "use non-negative weights")
        if self.bimodal_weight == 0 and self.hard_negative_weight == 0:
            bad("bimodal_weight/hard_negative_weight", (0, 0), "keep at least one loss")
        if self.hard_negative_loss not in ("separate", "joint"):
            bad("hard_negative_loss", self.hard_negative_loss, 'use "separate" (the paper) or "joint"')
        if self.hard_negative_anchor_only and self.hard_negative_loss != "separate":
            bad("hard_negative_anchor_only", self.hard_negative_anchor_only, "it stops the gradient into L^HN's "
                "positives, which the joint loss shares with L^B; use it with hard_negative_loss=\"separate\"")
        if self.hard_negative_loss == "joint" and self.bimodal_weight == 0:
            bad("hard_negative_loss", self.hard_negative_loss, "the joint loss is L^B's softmax with the hard "
                "negatives added, so it needs bimodal_weight > 0; use \"separate\" for the w/o BCL ablation")
        if self.reencode_chunk < 0:
            bad("reencode_chunk", self.reencode_chunk, "use 0 (no chunking) or a positive row count")
        if self.length_buckets < 0:
            bad("length_buckets", self.length_buckets, "use 0 (padded to the cap) or a positive bucket count")
        if self.length_chunk < 1:
            bad("length_chunk", self.length_chunk, "use a positive row count")
        if self.length_pack_keep and not self.length_pack:
            bad("length_pack_keep", self.length_pack_keep, "it keeps packed rows: set length_pack=True too, or "
                "leave it False")
        if self.length_aware_on not in ("cpu", "all"):
            bad("length_aware_on", self.length_aware_on, 'use "cpu" (length-aware on CPU only) or "all"')
        if self.length_plan not in ("auto", "always", "never"):
            bad("length_plan", self.length_plan, 'use "auto", "always" or "never"')
        if self.length_plan_margin is not None and not self.length_plan_margin >= 0:
            bad("length_plan_margin", self.length_plan_margin, "use a non-negative number of standard deviations, or None (chosen per pool)")
        if not 0.0 <= self.length_plan_correlation <= 1.0:
            bad("length_plan_correlation", self.length_plan_correlation, "use a correlation in [0, 1]")
        if self.warmup_steps < 0:
            bad("warmup_steps", self.warmup_steps, "use warmup_steps >= 0")
        if not 0 < self.reencode_fraction <= 1:
            bad("reencode_fraction", self.reencode_fraction, "use a fraction in (0, 1]")
        if self.reencode_fraction < 1 and not self.dedup_negatives:
            bad("reencode_fraction", self.reencode_fraction, "it needs dedup_negatives=True")
        if self.reencode_top is not None:
            if not 0 <= self.reencode_top <= self.k:
                bad("reencode_top", self.reencode_top, f"use None (all k) or 0 <= reencode_top <= k (= {self.k})")
            if self.dedup_negatives:
                bad("reencode_top", self.reencode_top, "top-m re-encoding does not combine with "
                    "dedup_negatives=True; set one of them")
        if self.other_negatives not in ("bank", "fresh"):
            bad("other_negatives", self.other_negatives, 'use "bank" or "fresh"')
        if self.hard_negative_start < 0:
            bad("hard_negative_start", self.hard_negative_start, "use a step >= 0")
        if self.neighbour_pairs < 0:
            bad("neighbour_pairs", self.neighbour_pairs, "use 0 (off) or a positive number of neighbour pairs per anchor")
        if self.neighbour_pairs and self.bimodal_weight == 0:
            bad("neighbour_pairs", self.neighbour_pairs, "neighbour pairs are negatives inside L^B, so they need "
                "bimodal_weight > 0")
        if self.hard_negative_every < 1:
            bad("hard_negative_every", self.hard_negative_every, "use 1 (every step) or a larger period")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "StepConfig":
        """Build from a mapping or ``ml_collections.ConfigDict``; unknown keys are an error."""
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"step_config.py: unknown step config field(s) {unknown}; known fields: {sorted(known)}."
            )
        return cls(**values)

    @property
    def uses_hard_negatives(self) -> bool:
        """Whether the step searches the banks and re-encodes (False for the in-batch baseline)."""
        return self.hard_negative_weight > 0

    @property
    def scheduled(self) -> bool:
        """Whether some steps skip L^HN (hard_negative_start / hard_negative_every)."""
        return self.uses_hard_negatives and (self.hard_negative_start > 0 or self.hard_negative_every > 1)

    @property
    def top_m(self) -> int:
        """Neighbours per anchor re-encoded with gradient (k unless reencode_top is set)."""
        return self.k if self.reencode_top is None else self.reencode_top

    def for_platform(self, platform: str) -> "StepConfig":
        """This config as it runs on devices of ``platform`` ("cpu", "gpu", "tpu"): with
        ``length_aware_on="cpu"``, every row padded to its cap (``length_buckets=0``) off the CPU."""
        if self.length_aware_on == "cpu" and platform != "cpu" and self.length_buckets:
            return dataclasses.replace(self, length_buckets=0)
        return self

    def hard_negative_active(self, step):
        """Whether step ``step`` (a traced int32 or an int) uses L^HN under the schedule."""
        offset = step - self.hard_negative_start
        return (offset >= 0) & (offset % self.hard_negative_every == 0)


_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def _optional_type(field: dataclasses.Field) -> type:
    """The non-None type of a field annotated ``X | None`` (annotations are strings here)."""
    names = [t.strip() for t in str(field.type).split("|") if t.strip() != "None"]
    if len(names) != 1 or names[0] not in _TYPES:
        raise TypeError(f"step_config.py: StepConfig.{field.name}: cannot type {field.type!r} for the config")
    return _TYPES[names[0]]


def config_dict(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.step``: every StepConfig field with its default (``overrides`` replace some).

    Fields that default to None become typed placeholders, so that the command line can still set them
    (``--config.step.false_negative_margin=0.1``).
    """
    known = {f.name for f in dataclasses.fields(StepConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"step_config.py: unknown step config field(s) {unknown}; known fields: {sorted(known)}.")
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(StepConfig):
        value = overrides.get(f.name, f.default)
        c[f.name] = ml_collections.config_dict.placeholder(_optional_type(f), value) if (
            f.default is None or value is None) else value
    return c
