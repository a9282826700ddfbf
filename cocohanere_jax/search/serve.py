"""A local HTTP server over an index: a JSON endpoint for editors and a small search page.

    python -m cocohanere_jax.search serve --index DIR [--port 8765] [--host 127.0.0.1]

* ``GET /api/search?q=...&k=10&lang=python&path=src/*&mode=dense`` -> ``{"query", "results": [...],
  "took_ms", "generation", "chunks"}`` (each result as in ``query --json``); errors -> 400 ``{"error"}``.
* ``GET /api/status`` -> the index's metadata (model, sources, generation, chunk count).
* ``GET /?q=...`` -> the page: a search box and the results (path:line, score, name, the chunk's code),
  rendered on the server and HTML-escaped; no JavaScript needed.

Only indexed chunks are ever returned (texts come from the index, never from a file read on request).
Every request checks the index's generation (one SQLite read) and reloads the matrix after a rebuild,
so `index` can run while the server is up.
"""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cocohanere_jax.search.index import Index, SearchError
from cocohanere_jax.search.query import display_path

MAX_K = 100

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
form {{ display: flex; gap: .5em; margin-bottom: 1em; }}
input[name=q] {{ flex: 1; font-size: 1.1em; padding: .3em; }}
.hit {{ margin: 1em 0; border-top: 1px solid #ddd; padding-top: .5em; }}
.loc {{ font-family: monospace; font-weight: bold; }} .score {{ color: #777; margin: 0 .7em; }}
.name {{ color: #05a; }} pre {{ background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }}
.meta {{ color: #777; font-size: .85em; }} .error {{ color: #b00; }}
</style></head><body>
<form method="get" action="/">
<input name="q" value="{q}" placeholder="describe the code, e.g. read a json file" autofocus>
<select name="lang"><option value="">any language</option>{langs}</select>
<input name="path" value="{path}" placeholder="path glob" size="12">
<button type="submit">Search</button></form>
<div class="meta">{status}</div>
{body}
</body></html>
"""


class SearchServer:
    """Holds the index (reloaded when rebuilt) and answers queries; thread-safe."""

    def __init__(self, index_dir: str, encoder: Any = None, snippet_lines: int = 40):
        self.index = Index(index_dir, encoder=encoder)
        self.lock = threading.Lock()
        self.snippet_lines = snippet_lines

    def search(self, params: dict[str, str]) -> dict:
        q = params.get("q", "")
        try:
            k = int(params.get("k", "10") or 10)
        except ValueError:
            raise SearchError(f"k={params.get('k')!r}: must be an integer.") from None
        k = max(1, min(k, MAX_K))
        t0 = time.perf_counter()
        with self.lock:
            self.index.reload_if_changed()
            results = self.index.search(q, k=k, language=params.get("lang") or None,
                                        path=params.get("path") or None, mode=params.get("mode") or "dense")
            gen, n = self.index._loaded_gen, len(self.index._ids)
        return {"query": q, "results": [r.to_json(self.snippet_lines) for r in results],
                "took_ms": round(1000 * (time.perf_counter() - t0), 2), "generation": gen, "chunks": n}

    def status(self) -> dict:
        with self.lock:
            self.index.reload_if_changed()
            meta = dict(self.index._meta)
        meta["sources"] = json.loads(meta.get("sources", "[]"))
        meta.pop("last_report", None)
        return meta

    def page(self, params: dict[str, str]) -> str:
        from cocohanere_jax.search.chunks import LANGUAGES

        q, lang, path = params.get("q", ""), params.get("lang", ""), params.get("path", "")
        esc = html.escape
        langs = "".join(f'<option value="{esc(x)}"{" selected" if x == lang else ""}>{esc(x)}</option>'
                        for x in LANGUAGES)
        body, status = "", ""
        if q.strip():
            try:
                res = self.search(params)
                status = (f"{len(res['results'])} results in {res['took_ms']} ms "
                          f"({res['chunks']} chunks indexed, generation {res['generation']})")
                parts = []
                for r in res["results"]:
                    parts.append(
                        f'<div class="hit"><span class="loc">{esc(display_path(r["path"]))}:{r["line"]}</span>'
                        f'<span class="score">{r["score"]:.4f}</span><span class="name">{esc(r["name"])}</span>'
                        f' <span class="meta">{esc(r["language"])} {esc(r["kind"])}, lines {r["line"]}-'
                        f'{r["end_line"]}</span><pre>{esc(r["text"])}</pre></div>')
                body = "\n".join(parts) or "<p>No results.</p>"
            except SearchError as e:
                body = f'<p class="error">{esc(str(e))}</p>'
        else:
            st = self.status()
            status = esc(f"{st.get('chunks', '?')} chunks from "
                         f"{', '.join(s['root'] for s in st['sources'])}; model {st.get('model_path')}")
        return _PAGE.format(title=esc(f"{q} - code search" if q else "code search"), q=esc(q), path=esc(path),
                            langs=langs, status=status, body=body)


def make_handler(server: SearchServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet; one line per request on stderr is noise for editors
            pass

        def _send(self, code: int, body: str, ctype: str) -> None:
            data = body.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, ensure_ascii=False), "application/json; charset=utf-8")

        def do_GET(self):  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
            try:
                if url.path == "/api/search":
                    self._json(200, server.search(params))
                elif url.path == "/api/status":
                    self._json(200, server.status())
                elif url.path in ("/", "/index.html"):
                    self._send(200, server.page(params), "text/html; charset=utf-8")
                else:
                    self._json(404, {"error": f"{url.path}: not found; use /, /api/search?q=... or /api/status"})
            except SearchError as e:
                self._json(400, {"error": str(e)})
            except Exception as e:  # never a traceback page; the server keeps serving
                self._json(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def make_server(index_dir: str, host: str = "127.0.0.1", port: int = 8765, encoder: Any = None) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server; port 0 picks a free one (`server.server_address`)."""
    app = SearchServer(index_dir, encoder=encoder)
    httpd = ThreadingHTTPServer((host, port), make_handler(app))
    httpd.daemon_threads = True
    httpd.app = app
    return httpd
