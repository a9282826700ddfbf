"""Export a model as a Hugging Face folder (and a params-only orbax checkpoint).

    python -m cocohanere_jax.export --model=PATH --out=DIR [--pooling=cls|mean|pooler]
    python -m cocohanere_jax.export --workdir=RUN --step=best|latest|N --out=DIR

From a model folder (Hugging Face or one of our exports), or from any saved step of a training run (the
run's `config.json` names the base model, which supplies the architecture and the tokenizer). The written
folder holds config.json, model.safetensors, the tokenizer files (and for CodeT5+ the remote-code files)
and loads with the original class (`AutoModel.from_pretrained(DIR)`, `trust_remote_code=True` for
CodeT5+) as well as with `cocohanere_jax.load_encoder(DIR)`. With a run, `DIR/params_orbax/` also
receives the parameters as a params-only orbax checkpoint, and `DIR/README.md` the model card.
"""

import json
import os

from absl import app, flags

from cocohanere_jax import checkpoints, model_card
from cocohanere_jax.models import hf
from cocohanere_jax.models.encoder import load_encoder

_MODEL = flags.DEFINE_string("model", None, "Source model folder (Hugging Face layout).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir (instead of --model).")
_STEP = flags.DEFINE_string("step", "best", "With --workdir: 'best' (best on valid), 'latest', or a step number.")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_POOLING = flags.DEFINE_enum("pooling", None, ["cls", "mean", "pooler", "first"], "Override the pooling.")


def export_run(workdir: str, step: str, out: str) -> str:
    """Writes the parameters of `workdir` at `step` as a Hugging Face folder plus params-only orbax."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: missing; is {workdir} the workdir of a training run?")
    with open(config_path, encoding="utf-8") as f:
        run_config = json.load(f)
    model = run_config["model"]
    enc = load_encoder(model["path"], pooling=model.get("pooling"))
    params, chosen = checkpoints.params_at(workdir, step)
    params = hf.canonical_params(params, enc.family)  # a run with model.scan_layers stacks its layers
    enc.with_params(params).export(out)
    checkpoints.save_params(os.path.join(out, "params_orbax"), params)
    summary_path = os.path.join(workdir, "summary.json")
    summary = {}
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    if summary.get("best_step") != chosen:  # the run's metrics describe another step's parameters
        summary = {k: v for k, v in summary.items() if not k.startswith(("best", "test"))}
    model_card.write_model_card(out, run_config, {**summary, "best_step": chosen})
    print(f"exported step {chosen} of {workdir} to {out}")
    return out


def main(argv):
    del argv
    if bool(_MODEL.value) == bool(_WORKDIR.value):
        raise app.UsageError("give exactly one of --model and --workdir")
    if _WORKDIR.value:
        export_run(_WORKDIR.value, _STEP.value, _OUT.value)
    else:
        print(load_encoder(_MODEL.value, pooling=_POOLING.value).export(_OUT.value))


def run():
    """Console-script entry point (pyproject.toml)."""
    app.run(main)


if __name__ == "__main__":
    run()
