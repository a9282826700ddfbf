"""Command-line config errors that name the key: ml_collections answers an unknown ``--config.a.b=v``
with a bare ``AttributeError: "'b'"``; `unknown_override` finds the override and lists its section's fields."""

from __future__ import annotations

import importlib.util
import os
import re

__all__ = ["unknown_override"]


def unknown_override(argv: list[str]) -> str | None:
    """The message for the first ``--config.a.b=v`` of ``argv`` that names no field of the config, else None."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_cocohanere_config", path)
    if module_spec is None or not os.path.isfile(path):
        return f"--config={spec}: no config file {path!r}"
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for a in argv:
        match = re.fullmatch(r"--config\.([\w.]+)(=.*)?", a)
        if not match:
            continue
        node, where = config, "config"
        for part in match.group(1).split("."):
            if not hasattr(node, "keys") or part not in node:
                known = sorted(node.keys()) if hasattr(node, "keys") else []
                return (f"{a}: {where} has no field {part!r}; its fields are {known}"
                        if known else f"{a}: {where} is a value, not a section")
            node, where = node[part], f"{where}.{part}"
    return None
