"""Tiny but real inputs for end-to-end tests: a small random BERT with the real MiniLM tokenizer, and a
GraphCodeBERT-layout CodeSearchNet directory of real (docstring, function) pairs from the standard library."""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import sysconfig

import hf_models

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_bert_folder(folder: str, **overrides) -> str:
    """A 2-layer hidden-32 BERT (random weights) with all-MiniLM-L6-v2's real tokenizer and mean pooling."""
    hf_models.save_bert(folder, vocab_size=30522, max_position_embeddings=128,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **overrides)
    src = hf_models.minilm_folder()
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(src, name), os.path.join(folder, name))
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(folder, "1_Pooling"), dirs_exist_ok=True)
    return folder


def stdlib_pairs(modules=("json", "textwrap", "csv", "shlex", "fractions", "statistics", "heapq", "bisect",
                          "string", "calendar", "glob", "fnmatch", "base64", "difflib", "ipaddress")):
    """(docstring tokens, code tokens, url, module) from real standard-library functions, via ast (read once
    per test session; each call returns fresh lists)."""
    return [(list(summary), list(code), url, mod) for summary, code, url, mod in _stdlib_pairs(tuple(modules))]


@functools.lru_cache(maxsize=None)
def _stdlib_pairs(modules: tuple[str, ...]) -> tuple:
    lib = sysconfig.get_paths()["stdlib"]
    out = []
    for mod in modules:
        path = os.path.join(lib, mod + ".py")
        if not os.path.exists(path):
            path = os.path.join(lib, mod, "__init__.py")
        src = open(path, encoding="utf-8").read()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc or node.name.startswith("__"):
                    continue
                summary = doc.strip().split("\n\n")[0].split()
                code = ast.get_source_segment(src, node).split()
                if len(summary) >= 3 and len(code) >= 8:
                    out.append((tuple(summary), tuple(code), f"stdlib/{mod}.py#{node.name}@{node.lineno}", mod))
    return tuple(out)


def csn_dir(root: str, language: str = "python") -> str:
    """Writes `<root>/<language>/{train,valid,test,codebase}.jsonl` in GraphCodeBERT's filtered layout,
    split by module (valid/test code and codebase docstrings blanked, as published)."""
    pairs = stdlib_pairs()
    mods = sorted({m for *_, m in pairs})
    valid_mods, test_mods = set(mods[:2]), set(mods[2:4])
    split_rows = {"train": [], "valid": [], "test": [], "codebase": []}
    for doc, code, url, mod in pairs:
        row = {"repo": "python/cpython", "path": f"Lib/{mod}.py", "func_name": url.split("#")[1],
               "original_string": " ".join(code), "language": language, "code": " ".join(code),
               "code_tokens": code, "docstring": " ".join(doc), "docstring_tokens": doc, "sha": "0" * 40,
               "url": url, "partition": "train"}
        split = "valid" if mod in valid_mods else "test" if mod in test_mods else "train"
        if split == "train":
            split_rows["train"].append(row)
        else:
            split_rows[split].append({**row, "original_string": "", "code": "", "code_tokens": [],
                                      "partition": split})
            split_rows["codebase"].append({**row, "docstring": "", "docstring_tokens": [], "partition": split})
    os.makedirs(os.path.join(root, language), exist_ok=True)
    for split, rows in split_rows.items():
        with open(os.path.join(root, language, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return root
