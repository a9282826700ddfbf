"""The optimizer: global-norm clip, AdamW on a linear schedule, and the learning rate it used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cocohanere_jax.step_config import StepConfig

__all__ = ["make_schedule", "make_optimizer", "current_learning_rate"]


def make_schedule(config: StepConfig, total_steps: int) -> optax.Schedule:
    """Linear decay from ``learning_rate`` to 0 over ``total_steps`` (after optional linear warmup)."""
    if total_steps <= config.warmup_steps:
        raise ValueError(
            f"optim.py: total_steps={total_steps} must exceed warmup_steps={config.warmup_steps}."
        )
    decay = optax.linear_schedule(config.learning_rate, 0.0, total_steps - config.warmup_steps)
    if not config.warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: StepConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW on the linear schedule (docs/METHOD.md section 5 defaults).

    The learning rate is injected as a hyperparameter so the step can report the rate it actually used
    (:func:`current_learning_rate`).
    """
    mask = None
    if not config.weight_decay_vectors:
        mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=make_schedule(config, total_steps),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=mask,
    )
    if config.grad_clip:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the last update, read from the ``inject_hyperparams`` state (NaN if none)."""
    # Duck-typed: optax names the state InjectHyperparamsState or InjectStatefulHyperparamsState.
    has_hyperparams = lambda x: isinstance(getattr(x, "hyperparams", None), dict)  # noqa: E731
    found = [
        s for s in jax.tree.leaves(opt_state, is_leaf=has_hyperparams)
        if has_hyperparams(s) and "learning_rate" in s.hyperparams
    ]
    if not found:
        return jnp.array(jnp.nan, jnp.float32)
    return jnp.asarray(found[0].hyperparams["learning_rate"], jnp.float32)

