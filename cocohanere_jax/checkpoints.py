"""orbax checkpoints: periodic asynchronous saves with resume, the best-on-valid params, and export.

Layout of a workdir:
  checkpoints/<step>/{state,meta}   full train state (params, optimizer, both banks, step, rng) + JSON meta
                                    (data iterator position, run info); keep-last-N
  best/<step>/{params,meta}         the parameters with the best validation MRR so far (+ its metrics)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of a pytree: restores land where the live arrays are."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Owns the two orbax managers of a run.

    Args:
      workdir: the run directory.
      keep: how many periodic checkpoints to keep.
      async_save: save in a background thread (the train loop goes on while the write completes).
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self.manager = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
            item_names=("state", "meta"),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True),
            item_names=("params", "meta"),
        )

    # periodic --------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Starts an (asynchronous) save of the full state and the JSON meta at `step`."""
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
        )

    def restore(self, step: int, state_like: Any) -> tuple[Any, dict]:
        """The state saved at `step`, with the shardings of `state_like`, and its meta."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(state_like)), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    # best on valid ---------------------------------------------------------------------------------
    def best_meta(self) -> dict | None:
        step = self.best.latest_step()
        if step is None:
            return None
        return dict(self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def save_best(self, step: int, params: Any, meta: Mapping[str, Any]) -> None:
        self.best.save(
            step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta))),
            force=True,
        )
        self.best.wait_until_finished()

    def restore_best_params(self, params_like: Any) -> tuple[Any, dict]:
        step = self.best.latest_step()
        if step is None:
            raise FileNotFoundError(f"{self.workdir}/best: no best-on-valid checkpoint was saved.")
        out = self.best.restore(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_like(params_like)), meta=ocp.args.JsonRestore()),
        )
        return out.params, dict(out.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self.best.close()


def read_item(path: str) -> Any:
    """Any saved pytree item (e.g. `<workdir>/checkpoints/<step>/state`) on this process's first device,
    whatever topology saved it (for export and inspection; training restores with `Checkpointer.restore`)."""
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(os.path.abspath(path)).item_metadata
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        return ckptr.restore(os.path.abspath(path), abstract)


def params_at(workdir: str, step: str | int = "best") -> tuple[Any, int]:
    """The parameters of a run at a saved step: an int, "latest" (periodic) or "best" (best on valid)."""
    workdir = os.path.abspath(workdir)
    if step == "best":
        kind, item, key = "best", "params", None
    else:
        kind, item, key = "checkpoints", "state", "params"
    root = os.path.join(workdir, kind)
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise FileNotFoundError(f"{root}: no saved step. Is {workdir} the workdir of a training run?")
    chosen = steps[-1] if step in ("best", "latest") else int(step)
    if chosen not in steps:
        raise FileNotFoundError(f"{root}: no step {chosen}; saved steps: {steps}.")
    tree = read_item(os.path.join(root, str(chosen), item))
    return (tree[key] if key else tree), chosen


def save_params(path: str, params: Any) -> None:
    """A params-only orbax checkpoint (e.g. for serving or fine-tuning elsewhere)."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), params, force=True)


def load_params(path: str, params_like: Any) -> Any:
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path), abstract_like(params_like))
