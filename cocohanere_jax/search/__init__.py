"""Search your own code: index source trees with an embedding model, query them, serve them.

    python -m cocohanere_jax.search index SRC [SRC ...] --index DIR [--model PATH]
    python -m cocohanere_jax.search query "read a json file" --index DIR [-k 10] [--lang L] [--path GLOB] [--json]
    python -m cocohanere_jax.search serve --index DIR [--port 8765]

Python API: `Index.build(sources, directory, model=...)`, `Index(directory).update()`,
`Index(directory).search(query, k=10, language=None, path=None, mode="dense")`. See docs/SEARCH.md.
"""

from cocohanere_jax.search.index import (DEFAULT_MODEL, HashingEncoder, Index, ModelMismatchError, Result,
                                         SearchError, UpdateReport, model_fingerprint, update_index)

__all__ = ["DEFAULT_MODEL", "HashingEncoder", "Index", "ModelMismatchError", "Result", "SearchError",
           "UpdateReport", "model_fingerprint", "update_index"]
