"""Hugging Face <-> Flax conversion: declarative tables that run both ways, strict loading, export.

A table is a list of `Rule(param, hf, transform)`: the Flax parameter path (`/`-separated, `{i}` for the
layer index), the Hugging Face state-dict key, and the transform ("T" = transpose a PyTorch Linear
[out, in] to a Flax kernel [in, out]; "" = as is). Loading is strict in the big_vision manner: every
checkpoint tensor is either consumed by a rule or matches an explicit ignore pattern (with a reason), and a
missing key or a wrong shape is an error that names the key and both shapes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from cocohanere_jax.models import layers
from cocohanere_jax.models.bert import BertConfig
from cocohanere_jax.models.t5 import T5Config

log = logging.getLogger(__name__)

CODET5P_MODEL_TYPE = "codet5p_embedding"
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")
BERT_MODEL_TYPES = ("bert",)
# Key in config.json where our export records the pooling (HF ignores unknown config keys).
POOLING_KEY = "cocohanere_pooling"


class ModelFileError(ValueError):
    """A file of a model folder is unreadable or invalid (truncated or corrupt weights, bad JSON, a tokenizer
    that does not load): the message names the file, what is wrong with it and what to do."""


class ConversionError(ModelFileError):
    """A checkpoint does not fit the architecture: names the key, the expected and the found shape."""


def _size(path: str) -> str:
    try:
        return f"{os.path.getsize(path)} bytes"
    except OSError:
        return "size unknown"


_RECOPY = ("Copy the file again from the original model (a full disk or an interrupted download or copy "
           "leaves it truncated), e.g. with save_pretrained, or `python -m cocohanere_jax.export` for our runs.")


def read_json(path: str, what: str = "JSON file") -> Any:
    """A JSON file, or a ModelFileError naming it (unreadable, not UTF-8, invalid JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ModelFileError(
            f"{path}:{e.lineno}:{e.colno}: {what} is not valid JSON ({e.msg}; {_size(path)}). {_RECOPY}"
        ) from None
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start}). {_RECOPY}") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the {what} ({e.strerror or e}).") from e


@dataclasses.dataclass(frozen=True)
class Rule:
    param: str  # Flax path, "/"-separated, may contain "{i}"
    hf: str  # HF state-dict key, may contain "{i}"
    transform: str = ""  # "T": transpose (torch Linear [out, in] <-> Flax kernel [in, out])


def _dense(param: str, hf: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{param}/kernel", f"{hf}.weight", "T")]
    if bias:
        rules.append(Rule(f"{param}/bias", f"{hf}.bias"))
    return rules


def _norm(param: str, hf: str) -> list[Rule]:
    return [Rule(f"{param}/scale", f"{hf}.weight"), Rule(f"{param}/bias", f"{hf}.bias")]


def t5_table(cfg: T5Config) -> list[Rule]:
    """T5 encoder (+ CodeT5+ projection head) <-> HF `T5EncoderModel` / `codet5p_embedding` keys."""
    attn = "encoder.block.{i}.layer.0.SelfAttention"
    mlp = "encoder.block.{i}.layer.1.DenseReluDense"
    rules = [
        Rule("shared/embedding", "shared.weight"),
        Rule("relative_attention_bias/embedding", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Rule("block_{i}/attention_norm/scale", "encoder.block.{i}.layer.0.layer_norm.weight"),
        Rule("block_{i}/mlp_norm/scale", "encoder.block.{i}.layer.1.layer_norm.weight"),
        Rule("final_norm/scale", "encoder.final_layer_norm.weight"),
    ]
    for name, hf in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
        rules += _dense(f"block_{{i}}/{name}", f"{attn}.{hf}", bias=False)
    for name in ("wi_0", "wi_1") if cfg.is_gated else ("wi",):
        rules += _dense(f"block_{{i}}/{name}", f"{mlp}.{name}", bias=False)
    rules += _dense("block_{i}/wo", f"{mlp}.wo", bias=False)
    if cfg.embed_dim:
        rules += _dense("proj", "proj")
    return rules


# Checkpoint tensors that a T5 encoder checkpoint may carry and that we do not use, with the reason.
T5_IGNORE = {
    r"encoder\.embed_tokens\.weight": "tied alias of shared.weight (checked equal)",
    r"(decoder|lm_head)\..*": "decoder / LM head of an encoder-decoder checkpoint: only the encoder embeds",
}


def bert_table(cfg: BertConfig) -> list[Rule]:
    """BERT/RoBERTa encoder <-> HF `BertModel` / `RobertaModel` keys (without the `bert.` prefix)."""
    layer = "encoder.layer.{i}"
    rules = [
        Rule("word_embeddings/embedding", "embeddings.word_embeddings.weight"),
        Rule("position_embeddings/embedding", "embeddings.position_embeddings.weight"),
        Rule("token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight"),
        *_norm("embeddings_norm/norm", "embeddings.LayerNorm"),
        *_dense("layer_{i}/query", f"{layer}.attention.self.query"),
        *_dense("layer_{i}/key", f"{layer}.attention.self.key"),
        *_dense("layer_{i}/value", f"{layer}.attention.self.value"),
        *_dense("layer_{i}/attention_out", f"{layer}.attention.output.dense"),
        *_norm("layer_{i}/attention_norm/norm", f"{layer}.attention.output.LayerNorm"),
        *_dense("layer_{i}/intermediate", f"{layer}.intermediate.dense"),
        *_dense("layer_{i}/output", f"{layer}.output.dense"),
        *_norm("layer_{i}/output_norm/norm", f"{layer}.output.LayerNorm"),
    ]
    if cfg.pooling == "pooler":
        rules += _dense("pooler", "pooler.dense")
    return rules


BERT_IGNORE = {
    r"embeddings\.position_ids": "a constant buffer, recomputed",
    r"pooler\.dense\.(weight|bias)": "pooler, unused by this pooling (kept and written back on export)",
    r"(lm_head|cls|classifier|qa_outputs)\..*": "task head, not part of the embedding model",
}
# Tensors that are unused but belong to the architecture: carried through unchanged to the export, so
# that the exported folder loads into the original class with no missing keys.
PASSTHROUGH = re.compile(r"pooler\.dense\.(weight|bias)")


def _expand(rules: list[Rule], num_layers: int) -> list[Rule]:
    out = []
    for r in rules:
        if "{i}" in r.param:
            out += [Rule(r.param.format(i=i), r.hf.format(i=i), r.transform) for i in range(num_layers)]
        else:
            out.append(r)
    return out


# An encoder built with `scan_layers=True` keeps each per-layer parameter once, stacked on a leading layer
# axis under one name (`layers.LAYER_NAMES`); the tables stay per layer and `stack_layers` /
# `unstack_layers` translate.
SCANNED_NAMES = layers.LAYER_NAMES


def is_scanned(params: Mapping[str, Any], family: str) -> bool:
    return SCANNED_NAMES[family][1] in params


def stack_layers(flat: Mapping[str, Any], family: str, num_layers: int) -> dict[str, Any]:
    """Flat per-layer params (``layer_{i}/...``) -> stacked (``layers/...``, axis 0 = layer)."""
    per, stacked = SCANNED_NAMES[family]
    pattern = re.compile(re.escape(per).replace(r"\{i\}", r"\d+") + "/")
    out = {k: v for k, v in flat.items() if not pattern.match(k)}
    first = per.format(i=0) + "/"
    for k in flat:
        if k.startswith(first):
            rest = k[len(first):]
            out[f"{stacked}/{rest}"] = np.stack([np.asarray(flat[f"{per.format(i=i)}/{rest}"]) for i in range(num_layers)])
    return out


def unstack_layers(flat: Mapping[str, Any], family: str, split=None) -> dict[str, Any]:
    """The inverse of `stack_layers`; ``split(value) -> list`` (default: the rows of the array)."""
    per, stacked = SCANNED_NAMES[family]
    split = split or (lambda v: list(np.asarray(v)))
    out = {}
    for k, v in flat.items():
        if k.startswith(stacked + "/"):
            for i, part in enumerate(split(v)):
                out[f"{per.format(i=i)}/{k[len(stacked) + 1:]}"] = part
        else:
            out[k] = v
    return out


def canonical_params(params: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The per-layer (unrolled) parameter tree, whether `params` is scanned or not."""
    if not is_scanned(params, family):
        return dict(params)
    return _unflatten(unstack_layers(_flatten(params), family))


def match_layout(params: Mapping[str, Any], family: str, cfg: T5Config | BertConfig, scanned: bool) -> Any:
    """`params` in the stacked (`scanned=True`) or the per-layer layout, converting only when it differs."""
    if not isinstance(params, Mapping) or is_scanned(params, family) == scanned:
        return params
    if not scanned:
        return canonical_params(params, family)
    return _unflatten(stack_layers(_flatten(params), family, _num_layers(family, cfg)))


def _num_layers(family: str, cfg: T5Config | BertConfig) -> int:
    return cfg.num_layers if family == "t5" else cfg.num_hidden_layers


def table_for(family: str, cfg: T5Config | BertConfig) -> tuple[list[Rule], dict[str, str]]:
    """The expanded rule table and the ignore patterns for one architecture."""
    if family == "t5":
        return _expand(t5_table(cfg), cfg.num_layers), T5_IGNORE
    return _expand(bert_table(cfg), cfg.num_hidden_layers), BERT_IGNORE


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, path + "/"))
        else:
            flat[path] = v
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _normalise_keys(state: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """Strips a model-class prefix (`bert.`, `roberta.`) and renames legacy LayerNorm gamma/beta."""
    prefixes = ("bert.", "roberta.", "model.") if family == "bert" else ()
    for prefix in prefixes:
        if any(k.startswith(prefix + "embeddings.") for k in state):
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
            break
    renamed = {}
    for k, v in state.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        renamed[k] = v
    return renamed


def hf_to_params(
    state: Mapping[str, np.ndarray],
    family: str,
    cfg: T5Config | BertConfig,
    expected: Mapping[str, Any],
    source: str = "checkpoint",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Converts an HF state dict to a Flax param tree, strictly.

    Args:
      state: HF key -> array.
      family: "t5" or "bert".
      cfg: the architecture config (decides optional rules such as the projection head or pooler).
      expected: the Flax param tree of shapes (e.g. from `jax.eval_shape(module.init, ...)`).
      source: the file name, for error messages.

    Returns:
      (params, passthrough): the Flax params (numpy float32) and unused architecture tensors kept for export.
    """
    state = _normalise_keys(dict(state), family)
    rules, ignore = table_for(family, cfg)
    scanned = is_scanned(expected, family)
    expected_flat = {k: tuple(v.shape) for k, v in _flatten(expected).items()}
    if scanned:
        expected_flat = unstack_layers(expected_flat, family, split=lambda s: [s[1:]] * s[0])
    table_params = {r.param for r in rules}
    if table_params != set(expected_flat):
        # A programming error in the table, not in the user's checkpoint.
        raise AssertionError(
            f"conversion table and model disagree: only in table {sorted(table_params - set(expected_flat))}, "
            f"only in model {sorted(set(expected_flat) - table_params)}"
        )
    missing = [r.hf for r in rules if r.hf not in state]
    if missing:
        raise ConversionError(
            f"{source}: missing {len(missing)} tensor(s) that the {family} architecture in config.json needs, "
            f"first: {missing[:5]}. Is config.json (num_layers, pooling, embed_dim) the one of these weights?"
        )
    flat = {}
    for r in rules:
        value = np.asarray(state[r.hf], dtype=np.float32)
        if r.transform == "T":
            value = value.T
        want = expected_flat[r.param]
        if value.shape != want:
            found = value.T.shape if r.transform == "T" else value.shape
            need = tuple(reversed(want)) if r.transform == "T" else want
            raise ConversionError(
                f"{source}: tensor {r.hf!r} has shape {found}, expected {need} (for Flax param {r.param}). "
                "Check config.json against the weights."
            )
        flat[r.param] = value
    used = {r.hf for r in rules}
    unknown, ignored = [], {}
    for k in state:
        if k in used:
            continue
        reason = next((why for pat, why in ignore.items() if re.fullmatch(pat, k)), None)
        if reason is None:
            unknown.append(k)
        else:
            ignored.setdefault(reason, []).append(k)
    if unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} tensor(s) that no rule uses and no ignore pattern explains, "
            f"first: {unknown[:5]}. The checkpoint is not a plain {family} encoder of this config."
        )
    if family == "t5" and "encoder.embed_tokens.weight" in state:
        if not np.array_equal(state["encoder.embed_tokens.weight"], state["shared.weight"]):
            raise ConversionError(f"{source}: encoder.embed_tokens.weight differs from shared.weight (untied).")
    for reason, keys in ignored.items():
        log.info("%s: ignored %d tensor(s) (%s), e.g. %s", source, len(keys), reason, keys[0])
    passthrough = {k: np.asarray(v) for k, v in state.items() if k not in used and PASSTHROUGH.fullmatch(k)}
    if scanned:
        flat = stack_layers(flat, family, _num_layers(family, cfg))
    return _unflatten(flat), passthrough


def params_to_hf(params: Mapping[str, Any], family: str, cfg: T5Config | BertConfig) -> dict[str, np.ndarray]:
    """The same table in reverse: Flax params -> HF state dict (float32, contiguous)."""
    rules, _ = table_for(family, cfg)
    flat = _flatten(params)
    if is_scanned(params, family):
        flat = unstack_layers(flat, family)
    state = {}
    for r in rules:
        value = np.asarray(flat[r.param], dtype=np.float32)
        state[r.hf] = np.ascontiguousarray(value.T if r.transform == "T" else value)
    return state


# ----------------------------------------------------------------------------------------------------
# Folders


def read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder}: no config.json. Pass a local Hugging Face model folder (as written by "
            "save_pretrained, or by `python -m cocohanere_jax.export`); this project never downloads from a hub."
        )
    config = read_json(path, "config.json")
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: config.json holds a {type(config).__name__}, not a JSON object. {_RECOPY}")
    return config


def load_safetensors(path: str, index: str | None = None) -> dict[str, np.ndarray]:
    """One safetensors file as numpy arrays, or a ModelFileError naming it (missing, truncated, corrupt)."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise ModelFileError(
            f"{path}: missing" + (f" (listed in {index})" if index else "") + f". {_RECOPY}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises SafetensorError / OSError with no file name
        raise ModelFileError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {e}; {_size(path)}): truncated or "
            f"corrupt. {_RECOPY}"
        ) from e


def read_state(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """Loads model.safetensors (single or sharded) or pytorch_model.bin as numpy arrays."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(single) or os.path.isfile(index):
        if os.path.isfile(single):
            return load_safetensors(single), single
        spec = read_json(index, "safetensors index")
        weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ModelFileError(f"{index}: no 'weight_map' object of tensor name -> shard file. {_RECOPY}")
        missing = sorted({s for s in weight_map.values() if not os.path.isfile(os.path.join(folder, s))})
        if missing:
            raise ModelFileError(
                f"{index} lists {len(missing)} shard file(s) that are not in {folder}: {missing[:5]}. {_RECOPY}")
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_safetensors(os.path.join(folder, shard), index))
        absent = [k for k in weight_map if k not in state]
        if absent:
            raise ModelFileError(
                f"{index}: {len(absent)} tensor(s) it maps are in none of the shards, first: "
                f"{[(k, weight_map[k]) for k in absent[:3]]}. {_RECOPY}")
        return state, index
    if os.path.isfile(binary):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{binary}: reading pytorch_model.bin needs PyTorch, which is not installed. Either "
                "`pip install torch` (CPU is enough), or convert the folder once to model.safetensors."
            ) from e
        try:
            sd = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, not a checkpoint, pickled code (weights_only refuses it)
            raise ModelFileError(
                f"{binary}: torch.load failed ({type(e).__name__}: {' '.join(str(e).split())[:300]}; {_size(binary)}): "
                f"truncated, corrupt or not a plain state dict. {_RECOPY}"
            ) from e
        if not isinstance(sd, dict) or not all(hasattr(v, "is_floating_point") for v in sd.values()):
            raise ModelFileError(f"{binary}: not a state dict of tensors (found {type(sd).__name__}). {_RECOPY}")
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}, binary
    raise FileNotFoundError(
        f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin."
    )


def sentence_transformers_pooling(folder: str) -> str | None:
    """The pooling of a sentence-transformers folder (1_Pooling/config.json), if there is one."""
    path = os.path.join(folder, "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return None
    cfg = read_json(path, "sentence-transformers pooling config")
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path}: holds a {type(cfg).__name__}, not a JSON object. {_RECOPY}")
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    raise ValueError(f"{path}: pooling {modes} is not supported; use 'cls' or 'mean' (pass pooling=...).")


def architecture(hf_config: Mapping[str, Any], folder: str, pooling: str | None) -> tuple[str, Any]:
    """Reads config.json into ("t5", T5Config) or ("bert", BertConfig), with the pooling resolved.

    Pooling: the explicit argument, else our export's `cocohanere_pooling`, else the CodeT5+ head for
    codet5p_embedding, else sentence-transformers' 1_Pooling/config.json, else CLS (T5 without head: mean).
    """
    model_type = hf_config.get("model_type")
    chosen = pooling or hf_config.get(POOLING_KEY) or sentence_transformers_pooling(folder)

    def pick(cls, **renamed):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: hf_config[k] for k in fields if k in hf_config}
        kwargs.update(renamed)
        for k, v in kwargs.items():  # a wrong type here would fail deep inside the model, far from the file
            default = fields[k].default
            want = type(default) if default is not None and default is not dataclasses.MISSING else int
            if k == "embed_dim" and v is None:
                continue
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) if want is float else
                  isinstance(v, want) and (want is bool or not isinstance(v, bool)))
            if not ok or (want is int and v < 0):
                raise ModelFileError(
                    f"{folder}/config.json: field {k!r} is {v!r}, expected a{' non-negative' if want is int else ''} "
                    f"{want.__name__}. Fix the field or copy config.json again from the original model.")
        return cls(**kwargs)

    if model_type in (CODET5P_MODEL_TYPE, "t5"):
        head = model_type == CODET5P_MODEL_TYPE
        if head and "embed_dim" not in hf_config:
            raise ValueError(f"{folder}/config.json: model_type {model_type} needs the field 'embed_dim'.")
        cfg = pick(
            T5Config,
            embed_dim=hf_config["embed_dim"] if head else None,
            pooling=chosen or ("first" if head else "mean"),
        )
        if cfg.pooling not in ("first", "cls", "mean"):
            raise ValueError(f"pooling {cfg.pooling!r} is not available for T5; use 'cls' (first token) or 'mean'.")
        return "t5", cfg
    if model_type in ROBERTA_MODEL_TYPES + BERT_MODEL_TYPES:
        cfg = pick(
            BertConfig,
            roberta_positions=model_type in ROBERTA_MODEL_TYPES,
            pad_token_id=hf_config.get("pad_token_id", 1 if model_type in ROBERTA_MODEL_TYPES else 0),
            pooling=chosen or "cls",
        )
        if cfg.pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling {cfg.pooling!r} is not one of 'cls', 'mean', 'pooler'.")
        return "bert", cfg
    raise ValueError(
        f"{folder}/config.json: model_type {model_type!r} is not supported; supported: "
        f"{CODET5P_MODEL_TYPE}, t5, bert, {', '.join(ROBERTA_MODEL_TYPES)}."
    )


def hf_config_for_export(family: str, cfg: T5Config | BertConfig, base: Mapping[str, Any]) -> dict[str, Any]:
    """config.json for an exported folder: the source's config updated with our architecture fields."""
    out = dict(base)
    for f in dataclasses.fields(cfg):
        if f.name in ("pooling", "roberta_positions", "attention_probs"):
            continue
        if f.name == "embed_dim" and not cfg.embed_dim:
            continue
        out[f.name] = getattr(cfg, f.name)
    out[POOLING_KEY] = cfg.pooling
    if family == "t5" and cfg.embed_dim:
        out.setdefault("model_type", CODET5P_MODEL_TYPE)
        out.setdefault("architectures", ["CodeT5pEmbeddingModel"])
        out.setdefault("auto_map", {
            "AutoConfig": "configuration_codet5p_embedding.CodeT5pEmbeddingConfig",
            "AutoModel": "modeling_codet5p_embedding.CodeT5pEmbeddingModel",
        })
    return out
