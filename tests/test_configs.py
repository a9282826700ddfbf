"""Every config file loads, names only known step fields, and the CodeSearchNet ones carry the paper's values."""

import glob
import importlib
import os

import pytest

from cocohanere_jax import step

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_loads(name, arg):
    c = importlib.import_module(f"configs.{name}").get_config(arg)
    cfg = step.StepConfig.from_config(c.step)
    assert cfg.k <= cfg.bank_size
    assert c.train.global_batch_size % 4 == 0  # runs on the 4 test devices
    if arg == "smoke":
        assert c.train.num_steps <= 10


@pytest.mark.parametrize("lang", ["java", "python", "javascript", "go", "php", "ruby"])
def test_codesearchnet_configs_use_the_paper_settings(lang):
    c = importlib.import_module(f"configs.csn_{lang}").get_config()
    assert c.data.language == lang and c.data.source == "codesearchnet"
    assert (c.step.bank_size, c.step.k, c.train.global_batch_size) == (8096, 10, 32)
    assert (c.step.learning_rate, c.step.adam_eps, c.step.weight_decay, c.step.grad_clip) == (3e-5, 1e-8, 0.01, 1.0)
    assert (c.data.query_length, c.data.code_length, c.step.warmup_steps) == (128, 256, 0)


def test_unknown_config_argument():
    from configs import csn_java

    with pytest.raises(ValueError, match="unknown config argument 'fast'"):
        csn_java.get_config("fast")


def test_step_section_is_generated_from_step_config():
    import dataclasses

    from cocohanere_jax.step_config import StepConfig
    from configs import common

    c = common.base()
    fields = {f.name: f.default for f in dataclasses.fields(StepConfig)}
    assert set(c.step.keys()) == set(fields)  # every field reachable from the command line
    assert StepConfig.from_config(c.step) == StepConfig()  # one source of defaults
    c.step.false_negative_margin = 0.1  # a None default is a typed placeholder, settable on a locked config
    assert StepConfig.from_config(c.step).false_negative_margin == 0.1


def test_config_argument_presets_and_settings():
    from configs import default

    c = default.get_config("smoke,in_batch,k=5,train.seed=3,false_negative_margin=0.2,knn=uni")
    assert (c.step.hard_negative_weight, c.step.k, c.train.seed, c.step.knn) == (0.0, 5, 3, "uni")
    assert c.step.false_negative_margin == 0.2 and c.train.num_steps == 6  # smoke applied first
    assert default.get_config("wo_bcl").step.bimodal_weight == 0.0
    assert default.get_config("zero_shot").train.num_steps == 0
    with pytest.raises(ValueError, match=r"config.step has no field 'kk'; its fields are \[.*'k'"):
        default.get_config("step.kk=1")
    with pytest.raises(ValueError, match=r"not a field of any section; known: data: \["):
        default.get_config("kk=1")
    with pytest.raises(ValueError, match="config.train.seed='x'"):
        default.get_config("seed=x")


def test_unknown_override_flag_names_its_section_fields():
    from cocohanere_jax import config_check as main

    argv = ["prog", "--config=configs/default.py:smoke", "--config.step.kk=1", "--workdir=x"]
    message = main.unknown_override(argv)
    assert message.startswith("--config.step.kk=1: config.step has no field 'kk'") and "'temperature'" in message
    assert main.unknown_override(["prog", "--config=configs/default.py", "--config.step.k=1"]) is None
    assert "is a value" in main.unknown_override(["prog", "--config=configs/default.py", "--config.step.k.x=1"])


def test_cli_config_errors_exit_2_with_the_message(tmp_path):
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    for args, expected in ((["--config=configs/default.py", "--config.step.kk=1"], "config.step has no field 'kk'"),
                           (["--config=configs/default.py:kk=1"], "config key 'kk' is not a field of any section")):
        out = subprocess.run([sys.executable, "-m", "cocohanere_jax.main", *args, f"--workdir={tmp_path}"],
                             cwd=root, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
