"""tensorflow-datasets builder for CodeSearchNet-layout corpora, written as array_record (no TF).

Reads either published layout (GraphCodeBERT-filtered or raw CSN v2, see `cocohanere_data.codesearchnet`) or a
corpus built by `cocohanere_data.source_tree.build` / `cocohanere_data.stdlib_corpus` from a directory given as the
config value ``source_dir`` (or tfds' ``manual_dir`` when that is None). Every record stores its
DataID, because tfds shuffles rows at write time:

    data_id   int64  train (and raw-layout valid/test): the row index `load_pairs` gives the pair;
                     GraphCodeBERT valid/test: the query index of `load_eval_split`;
                     codebase: the codebase index of `load_eval_split`
    query     text   ' '.join(docstring_tokens)   ("" in codebase records)
    code      text   ' '.join(code_tokens)        ("" in GraphCodeBERT valid/test records: blanked)
    url       text   the key (target url for valid/test queries)
    language  text
    origin    text   repo

Build and read back (tensorflow is never imported):

    builder = codesearch_builder(root, "python", data_dir)   # builds once, then reuses
    source = builder.as_data_source()["train"]              # random access, rows in shuffled order
    pairs = read_pairs(builder, "train")                     # Pairs ordered by DataID

Text features come back as UTF-8 bytes from the data source; `read_pairs` decodes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cocohanere_data.codesearchnet import DOWNLOAD_INSTRUCTIONS, LANGUAGES, detect_layout, load_eval_split, load_pairs
from cocohanere_data.records import BadInputError, Pair, Pairs


@dataclasses.dataclass
class CodeSearchConfig(tfds.core.BuilderConfig):
    """Which language to read, from where, in which layout."""

    language: str = "python"
    layout: str = "auto"               # "auto", "graphcodebert" or "csn"
    source_dir: str | None = None      # data root holding <language>/...; None = tfds manual_dir
    strict: bool = False               # raise on the first bad row instead of skipping it


class CodeSearchNet(tfds.core.GeneratorBasedBuilder):
    """CodeSearchNet (or any corpus in its layout) as array_record files with DataIDs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: train/valid/test(/codebase) with DataIDs."}
    BUILDER_CONFIGS = [CodeSearchConfig(name=lang, language=lang) for lang in LANGUAGES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Code search pairs in the CodeSearchNet layout; data_id is the DataID.",
            features=tfds.features.FeaturesDict({
                "data_id": np.int64,
                "query": tfds.features.Text(),
                "code": tfds.features.Text(),
                "url": tfds.features.Text(),
                "language": tfds.features.Text(),
                "origin": tfds.features.Text(),
            }),
            supervised_keys=None,
            homepage="https://github.com/github/CodeSearchNet",
        )

    def _source_root(self, dl_manager) -> Path:
        cfg: CodeSearchConfig = self.builder_config  # type: ignore[assignment]
        if cfg.source_dir:
            root = Path(cfg.source_dir)
        else:
            manual = Path(dl_manager._manual_dir) if dl_manager._manual_dir else None  # noqa: SLF001
            if manual is None or not manual.is_dir():
                raise FileNotFoundError(
                    f"CodeSearchNet {cfg.language}: no source_dir in the config and no manual_dir "
                    f"({manual}).\n" + DOWNLOAD_INSTRUCTIONS)
            root = manual
        detect_layout(root, cfg.language)  # raises with instructions when the files are absent
        return root

    def _split_generators(self, dl_manager):
        cfg: CodeSearchConfig = self.builder_config  # type: ignore[assignment]
        root = self._source_root(dl_manager)
        layout = detect_layout(root, cfg.language) if cfg.layout == "auto" else cfg.layout
        splits = {"train": self._pair_examples(root, "train", layout)}
        if layout == "csn":
            splits["valid"] = self._pair_examples(root, "valid", layout)
            splits["test"] = self._pair_examples(root, "test", layout)
        else:
            for split in ("valid", "test"):
                splits[split] = self._query_examples(root, split, layout)
            splits["codebase"] = self._codebase_examples(root, layout)
        return splits

    def _generate_examples(self, **_):  # pragma: no cover - splits use the generators below
        raise NotImplementedError

    def _pair_examples(self, root, split, layout):
        cfg: CodeSearchConfig = self.builder_config  # type: ignore[assignment]
        for p in load_pairs(root, cfg.language, split, layout, strict=cfg.strict):
            yield p.data_id, {"data_id": p.data_id, "query": p.query, "code": p.code, "url": p.key,
                              "language": p.language, "origin": p.origin}

    def _query_examples(self, root, split, layout):
        cfg: CodeSearchConfig = self.builder_config  # type: ignore[assignment]
        ev = load_eval_split(root, cfg.language, split, layout, strict=cfg.strict)
        for i, (q, k) in enumerate(zip(ev.query_texts, ev.query_keys)):
            yield i, {"data_id": i, "query": q, "code": "", "url": k, "language": cfg.language, "origin": ""}

    def _codebase_examples(self, root, layout):
        cfg: CodeSearchConfig = self.builder_config  # type: ignore[assignment]
        ev = load_eval_split(root, cfg.language, "test", layout, strict=cfg.strict)
        for i, (c, k) in enumerate(zip(ev.code_texts, ev.code_keys)):
            yield i, {"data_id": i, "query": "", "code": c, "url": k, "language": cfg.language, "origin": ""}


def codesearch_builder(source_dir: str | os.PathLike, language: str, data_dir: str | os.PathLike, *,
                       layout: str = "auto", strict: bool = False, prepare: bool = True) -> CodeSearchNet:
    """A builder for `language` under `source_dir`, prepared (array_record) in `data_dir`.

    The config name carries a digest of the absolute source path, so two sources never share a
    prepared copy in the same `data_dir`.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    root = Path(source_dir).resolve()
    digest = hashlib.sha1(f"{root}|{layout}|{strict}".encode()).hexdigest()[:10]
    cfg = CodeSearchConfig(name=f"{language}_{digest}", language=language, layout=layout,
                           source_dir=str(root), strict=strict,
                           description=f"{language} from {root} ({layout} layout)")
    builder = CodeSearchNet(config=cfg, data_dir=str(data_dir), file_format="array_record")
    if prepare:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder


def _decode(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_pairs(builder: CodeSearchNet, split: str = "train") -> Pairs:
    """The records of a pair split, ordered by DataID, as `Pairs` (equal to `load_pairs`)."""
    source = builder.as_data_source()[split]
    n = len(source)
    rows: list[Pair | None] = [None] * n
    for i in range(n):
        r = source[i]
        d = int(r["data_id"])
        if not 0 <= d < n or rows[d] is not None:
            raise BadInputError(f"{builder.data_dir} {split}: DataID {d} out of range or repeated")
        rows[d] = Pair(d, _decode(r["query"]), _decode(r["code"]), _decode(r["url"]),
                       _decode(r["language"]), _decode(r["origin"]))
    return Pairs(rows)  # type: ignore[arg-type]
