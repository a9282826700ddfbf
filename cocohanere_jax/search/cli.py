"""`python -m cocohanere_jax.search {index,query,serve}` (also the `cocohanere-search` script)."""

from __future__ import annotations

import argparse
import os
import sys

USAGE = __doc__


def _jax_cache(index_dir: str) -> None:
    """A persistent JAX compilation cache inside the index (cold CLI queries skip compiling the model)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    path = os.path.join(os.path.abspath(index_dir), "jax_cache")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _parser() -> argparse.ArgumentParser:
    from cocohanere_jax.search.chunks import LANGUAGES
    from cocohanere_jax.search.index import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="python -m cocohanere_jax.search",
                                description="Search your own code with a (fine-tuned) embedding model.")
    sub = p.add_subparsers(dest="command", required=True)

    ix = sub.add_parser("index", help="build or update an index of source trees")
    ix.add_argument("src", nargs="+", help="source directories (a git work tree follows `git ls-files`)")
    ix.add_argument("--index", required=True, help="index directory (created if missing)")
    ix.add_argument("--model", default=None,
                    help=f"Hugging Face folder or an export of a training run (default {DEFAULT_MODEL}; "
                         "an existing index keeps its own model)")
    ix.add_argument("--jobs", type=int, default=None, help="extraction processes (default: every core)")
    ix.add_argument("--batch-size", type=int, default=32, help="chunks per model call")
    ix.add_argument("--max-length", type=int, default=256, help="code tokens embedded per chunk")
    ix.add_argument("--max-file-bytes", type=int, default=2_000_000, help="larger files are skipped")
    ix.add_argument("--ann", action="store_true", help="also build a faiss HNSW approximate index (faiss-cpu)")
    ix.add_argument("--no-git", action="store_true", help="walk the tree even in a git work tree")
    ix.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser("query", help="search an index")
    q.add_argument("text", help='what the code does, e.g. "read a json file"')
    q.add_argument("--index", required=True)
    q.add_argument("-k", type=int, default=10, help="number of results")
    q.add_argument("--lang", choices=LANGUAGES, default=None)
    q.add_argument("--path", default=None, help="glob over indexed paths (`*` also matches /); no wildcard = prefix")
    q.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="dense",
                   help="dense (model), bm25 (lexical) or hybrid (rank fusion); see docs/SEARCH.md")
    q.add_argument("--ann", action="store_true", help="approximate search (index built with --ann)")
    q.add_argument("--json", action="store_true", help="one JSON object per result")
    q.add_argument("--lines", type=int, default=3, help="snippet lines per result (0: none)")
    q.add_argument("--model", default=None, help="query model (default: the index's; must be the same model)")

    s = sub.add_parser("serve", help="local HTTP server: JSON API + search page")
    s.add_argument("--index", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--model", default=None, help="query model (default: the index's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from cocohanere_jax.search.index import DEFAULT_MODEL, Index, SearchError, load_model, update_index

    try:
        if args.command == "index":
            _jax_cache(args.index)
            model = args.model
            if model is None:
                try:
                    model = Index(args.index).meta()["model_path"]
                except SearchError:
                    model = DEFAULT_MODEL
            report = update_index(args.index, args.src, model=model, jobs=args.jobs, batch_size=args.batch_size,
                                  max_length=args.max_length, max_file_bytes=args.max_file_bytes, ann=args.ann,
                                  progress=not args.quiet, use_git=not args.no_git)
            print(report.summary())
            return 0
        if args.command == "query":
            from cocohanere_jax.search.query import format_json, format_text

            if not args.text.strip():
                raise SearchError('empty query: give some words describing the code, e.g. "read a json file".')
            index = Index(args.index, resident=False)  # one query: score from the memory map
            if args.mode != "bm25":
                _jax_cache(args.index)
                index._encoder = load_model(args.model) if args.model else None
            results = index.search(args.text, k=args.k, language=args.lang, path=args.path, mode=args.mode,
                                   ann=args.ann)
            out = format_json(results, args.lines) if args.json else format_text(results, args.lines)
            if out:
                print(out)
            elif not args.json:
                print("no results", file=sys.stderr)
            return 0
        if args.command == "serve":
            from cocohanere_jax.search.serve import make_server

            _jax_cache(args.index)
            enc = load_model(args.model) if args.model else None
            httpd = make_server(args.index, host=args.host, port=args.port, encoder=enc)
            httpd.app.search({"q": "warm up the model"})
            host, port = httpd.server_address[:2]
            print(f"serving {args.index} on http://{host}:{port}/  (JSON: /api/search?q=...)", flush=True)
            try:
                httpd.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
