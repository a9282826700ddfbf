"""Reproducible multi-language code-search corpus from package-registry sources (not run in CI).

    python -m cocohanere_data.build_registry_corpus --workdir ~/cocohanere-registry [--langs python,go] [--jobs 2]

Needs only the registry clients: ``apt-get download`` + ``dpkg -x`` (Debian 12 archive),
``npm pack`` and ``pip download --no-deps``. Everything goes under ``--workdir``, which must lie
outside the repository (the extracted sources are a few hundred MB; never commit them):

    WORKDIR/downloads/{deb,npm,pip}/   fetched artifacts
    WORKDIR/src/<lang>/<package>/...   extracted source trees, one folder per package
    WORKDIR/corpus/<lang>/             {train,valid,test,codebase}.jsonl + report.json
    WORKDIR/manifest.json              exact artifact names, versions and sha256
    WORKDIR/counts.json                pairs per language and split

Sources (see docs OFFLINE.md): Python = this interpreter's stdlib + sympy + django wheels;
Go = Debian golang-1.19-src; Java = Debian openjdk-17-source (java.base, java.desktop,
jdk.compiler); Ruby = Debian libruby3.1 + Rails/Rack/Sinatra/RSpec/Thor/i18n/rake packages;
PHP = Debian php-symfony-* + phpseclib3, doctrine-dbal, phpunit, twig, monolog, guzzle, commonmark;
JavaScript = npm webpack, three, lodash + Debian eslint. Debian versions are those of the bookworm
archive at fetch time (recorded in the manifest); npm and PyPI versions are pinned below.
Splits are by package and, inside a package, by directory (`SPLIT_DEPTH`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

from cocohanere_data.source_tree.build import BuildConfig, build_corpus
from cocohanere_data.source_tree.languages import spec_for

log = logging.getLogger("registry_corpus")

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str                 # "deb", "npm", "pip", "stdlib"
    name: str                 # package name (and group name under src/<lang>/)
    version: str = ""         # pinned version for npm/pip; "" = archive candidate for deb
    subdir: str = ""          # root inside the artifact; "" = common root of the language's files
    zip_member: str = ""      # a zip inside the artifact to extract instead (Java's src.zip)
    zip_prefixes: tuple[str, ...] = ()
    split_children: bool = False  # each child of the root becomes its own package folder


RUBY_GEMS = ("ruby-activerecord", "ruby-activesupport", "ruby-actionpack", "ruby-rack", "ruby-sinatra",
             "ruby-rspec-core", "ruby-thor", "ruby-i18n", "rake")
PHP_EXTRA = ("php-phpseclib3", "php-doctrine-dbal", "phpunit", "php-twig", "php-monolog",
             "php-guzzlehttp-guzzle", "php-league-commonmark")


def sources(lang: str) -> list[Source]:
    if lang == "python":
        return [Source("stdlib", "stdlib", split_children=True), Source("pip", "sympy", "1.14.0", subdir="sympy"),
                Source("pip", "django", "5.2.19", subdir="django")]
    if lang == "go":
        return [Source("deb", "golang-1.19-src", subdir="usr/share/go-1.19/src", split_children=True)]
    if lang == "java":
        return [Source("deb", "openjdk-17-source", zip_member="usr/lib/jvm/openjdk-17/lib/src.zip",
                       zip_prefixes=("java.base/", "java.desktop/", "jdk.compiler/"), split_children=True)]
    if lang == "ruby":
        return [Source("deb", "libruby3.1", subdir="usr/lib/ruby/3.1.0", split_children=True)] + \
            [Source("deb", n) for n in RUBY_GEMS]
    if lang == "php":
        return [Source("deb", n) for n in (*_symfony_packages(), *PHP_EXTRA)]
    if lang == "javascript":
        return [Source("npm", "webpack", "5.112.2"), Source("npm", "three", "0.187.0"),
                Source("npm", "lodash", "4.18.1"), Source("deb", "eslint")]
    raise ValueError(lang)


# Group = first SPLIT_DEPTH directory components under src/<lang>/ (see source_tree.build.group_of):
# 1 = the package (php-symfony-console), 2 = a package's top-level directory (sympy/core,
# crypto/tls, stdlib modules/packages, which are unpacked one per folder), 3 = java.base/java/util,
# webpack/lib/optimize, three/src/math.
SPLIT_DEPTH = {"python": 2, "go": 2, "java": 3, "ruby": 2, "php": 1, "javascript": 3}
LANGS = ("python", "go", "java", "ruby", "php", "javascript")


def _symfony_packages() -> list[str]:
    out = subprocess.run(["apt-cache", "depends", "php-symfony"], capture_output=True, text=True, check=True)
    names = set()
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            name = line.split(":", 1)[1].strip().strip("<>")
            if name.startswith("php-symfony-"):
                names.add(name)
    return sorted(names)


def _run(cmd: list[str], cwd: Path) -> str:
    log.info("$ %s", " ".join(cmd))
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(src: Source, downloads: Path) -> Path | None:
    """Downloads the artifact (cached); returns its path (None for the stdlib)."""
    if src.kind == "stdlib":
        return None
    d = downloads / src.kind
    d.mkdir(parents=True, exist_ok=True)
    if src.kind == "deb":
        hits = sorted(d.glob(f"{src.name}_*.deb"))
        if not hits:
            _run(["apt-get", "download", src.name + (f"={src.version}" if src.version else "")], d)
            hits = sorted(d.glob(f"{src.name}_*.deb"))
    elif src.kind == "npm":
        hits = sorted(d.glob(f"{src.name}-{src.version}.tgz"))
        if not hits:
            _run(["npm", "pack", f"{src.name}@{src.version}", "--silent"], d)
            hits = sorted(d.glob(f"{src.name}-{src.version}.tgz"))
    elif src.kind == "pip":
        pattern = f"{src.name.replace('-', '_')}-{src.version}-*.whl"
        hits = sorted(p for p in d.glob("*.whl") if p.match(pattern) or p.name.lower().startswith(
            f"{src.name.lower()}-{src.version}-"))
        if not hits:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(d),
                  f"{src.name}=={src.version}"], d)
            hits = sorted(p for p in d.glob("*.whl") if p.name.lower().startswith(f"{src.name.lower()}-{src.version}-"))
    else:
        raise ValueError(src.kind)
    if not hits:
        raise RuntimeError(f"{src.kind} {src.name}: download produced no file in {d}")
    return hits[-1]


def _common_root(root: Path, extensions: tuple[str, ...]) -> Path:
    dirs = [p.parent for p in root.rglob("*") if p.is_file() and p.name.endswith(extensions)
            and not p.is_symlink()]
    if not dirs:
        return root
    return Path(os.path.commonpath([str(d) for d in dirs]))


def unpack(src: Source, artifact: Path | None, lang: str, work: Path) -> list[Path]:
    """Extracts into WORKDIR/src/<lang>/<package>/ (skipped if present); returns package folders."""
    dest_root = work / "src" / lang
    dest_root.mkdir(parents=True, exist_ok=True)
    marker = dest_root / f".{src.name}.done"
    if marker.exists():
        return [Path(p) for p in json.loads(marker.read_text())]
    tmp = work / "extract" / src.name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    exts = spec_for(lang).extensions
    if src.kind == "stdlib":
        lib = Path(sysconfig.get_paths()["stdlib"])
        shutil.copytree(lib, tmp / "lib", ignore=shutil.ignore_patterns("site-packages", "__pycache__"),
                        symlinks=True)
        root = tmp / "lib"
    elif src.kind == "deb":
        _run(["dpkg", "-x", str(artifact), str(tmp)], work)
        root = tmp
    elif src.kind == "npm":
        with tarfile.open(artifact) as tf:
            tf.extractall(tmp, filter="data")
        root = tmp / "package"
    elif src.kind == "pip":
        with zipfile.ZipFile(artifact) as zf:
            zf.extractall(tmp)
        root = tmp
    else:
        raise ValueError(src.kind)
    if src.zip_member:
        inner = tmp / "zip"
        with zipfile.ZipFile(root / src.zip_member) as zf:
            members = [m for m in zf.namelist() if m.startswith(src.zip_prefixes)]
            zf.extractall(inner, members)
        root = inner
    elif src.subdir:
        root = root / src.subdir
    else:
        root = _common_root(root, exts)
    if not root.is_dir():
        raise RuntimeError(f"{src.name}: expected directory {root} in the artifact")
    made = []
    if src.split_children:
        for child in sorted(root.iterdir()):
            target = dest_root / child.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(child), target)
            made.append(target)
    else:
        target = dest_root / src.name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(root), target)
        made.append(target)
    shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(json.dumps([str(p) for p in made]))
    return made


def _deb_version(artifact: Path) -> str:
    return _run(["dpkg-deb", "-f", str(artifact), "Version"], artifact.parent).strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cocohanere_data.build_registry_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="directory outside the repository")
    p.add_argument("--langs", default=",".join(LANGS))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--fetch-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(args.workdir).resolve()
    if work == REPO_ROOT or REPO_ROOT in work.parents:
        p.error(f"--workdir {work} lies inside the repository {REPO_ROOT}; choose a directory outside it")
    work.mkdir(parents=True, exist_ok=True)
    langs = [x for x in args.langs.split(",") if x]
    manifest_path = work / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for lang in langs:
        entries = []
        for src in sources(lang):
            artifact = fetch(src, work / "downloads")
            unpack(src, artifact, lang, work)
            entry = {"kind": src.kind, "name": src.name}
            if artifact is not None:
                entry.update(file=artifact.name, sha256=_sha256(artifact),
                             version=_deb_version(artifact) if src.kind == "deb" else src.version)
            else:
                entry.update(version=sys.version.split()[0], path=sysconfig.get_paths()["stdlib"])
            entries.append(entry)
        manifest[lang] = entries
        manifest_path.write_text(json.dumps(manifest, indent=1))
    if args.fetch_only:
        return 0

    counts_path = work / "counts.json"
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    for lang in langs:
        cfg = BuildConfig(lang=lang, split_depth=SPLIT_DEPTH[lang], seed=args.seed, jobs=args.jobs)
        report = build_corpus(work / "src" / lang, work / "corpus", cfg)  # logs format_report
        kept = report["functions"]["kept"]
        counts[lang] = {**kept, "codebase": kept["valid"] + kept["test"],
                        "packages": len(manifest.get(lang, [])),
                        "groups": report["split"]["num_groups"],
                        "files_parsed": report["files"]["parsed"],
                        "functions_extracted": report["functions"]["extracted"]}
        counts_path.write_text(json.dumps(counts, indent=1))
    print("\n| language | train | valid | test | codebase | split groups (train/valid/test) |")
    print("|---|---:|---:|---:|---:|---|")
    for lang in langs:
        c = counts[lang]
        g = c["groups"]
        print(f"| {lang} | {c['train']} | {c['valid']} | {c['test']} | {c['codebase']} | "
              f"{g['train']}/{g['valid']}/{g['test']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
