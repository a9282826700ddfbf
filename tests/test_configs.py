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
