"""Corpus builder: tree-sitter extraction per language, CodeSearchNet filters, dedupe, package splits."""

import json
from pathlib import Path

import pytest

from cocohanere_data.codesearchnet import load_eval_split, load_pairs
from cocohanere_data.source_tree import build as B
from cocohanere_data.source_tree.docs import summary, tokenize_docstring
from cocohanere_data.source_tree.extract import extract_functions

LANGS = ("python", "java", "javascript", "go", "php", "ruby")


# ---------------------------------------------------------------------------------------------
# A small synthetic tree per language: 6 packages x 2 documented functions that pass every filter,
# plus one function per filter that must be removed.


def _kept(lang, k, j):
    """Source of a function that passes every filter; (name, summary) it must yield."""
    name = f"compute{k}x{j}"
    summ = f"Compute the checksum number {k} {j} of the given buffer."
    body = {
        "python": f'def {name}(x):\n    """{summ}\n\n    Args:\n        x: the buffer.\n    """\n'
                  f'    y = x + {k}\n    z = y * {j}\n    return z\n',
        "java": f"    /**\n     * {summ}\n     * @param x the buffer\n     */\n    public int {name}(int x) {{\n"
                f"        int y = x + {k};\n        return y * {j};\n    }}\n",
        "javascript": f"/**\n * {summ}\n * @param {{number}} x the buffer\n */\nfunction {name}(x) {{\n"
                      f"  const y = x + {k};\n  return y * {j};\n}}\n",
        "go": f"// {name} computes the checksum number {k} {j} of the given buffer.\nfunc {name}(x int) int {{\n"
              f"\ty := x + {k}\n\treturn y * {j}\n}}\n",
        "php": f"    /**\n     * {summ}\n     *\n     * @param int $x\n     */\n    public function {name}($x)\n"
               f"    {{\n        return $x * {j} + {k};\n    }}\n",
        "ruby": f"  # {summ}\n  # @param x [Integer]\n  def {name}(x)\n    y = x + {k}\n    y * {j}\n  end\n",
    }[lang]
    if lang == "go":
        summ = f"{name} computes the checksum number {k} {j} of the given buffer."
    return name, summ, body


def _removed(lang):
    """{filter: source} of functions each filter must remove (one per filter)."""
    if lang == "python":
        return {
            "no_doc": "def undocumented(a):\n    b = a\n    c = b\n    return c\n",
            "empty_doc": 'def empty_doc(a):\n    """   """\n    b = a\n    return b\n',
            "test_in_name": 'def test_parser(a):\n    """Check that the parser works."""\n    b = a\n    return b\n',
            "constructor_or_standard_method": 'class K:\n    def __repr__(self):\n        """Return a printable '
                                              'form of the object."""\n        a = 1\n        return str(a)\n',
            "short_code": 'def short(a):\n    """Return the same value again."""\n    return a\n',
            "short_summary": 'def terse(a):\n    """Terse doc.\n\n    Longer text that is not the summary.\n    """\n'
                             '    b = a\n    c = b\n    return c\n',
        }
    if lang == "java":
        return {
            "no_doc": "    public int undocumented(int a) {\n        int b = a;\n        return b;\n    }\n",
            "no_body": "    /** Return the value of the abstract thing. */\n    public abstract int abs(int a);\n",
            "test_in_name": "    /** Check that the parser works fine. */\n    public void testParser() {\n        int a = 1;\n"
                            "        a++;\n    }\n",
            "constructor_or_standard_method": "    /** Return a printable form of this. */\n    public String toString()"
                                              " {\n        String s = \"x\";\n        return s;\n    }\n",
            "short_code": "    /** Return the same value again. */\n    public int same(int a) { return a; }\n",
            "short_summary": "    /**\n     * Terse doc.\n     * @return the value\n     */\n    public int terse() {\n"
                             "        int a = 1;\n        return a;\n    }\n",
        }
    if lang == "javascript":
        return {
            "no_doc": "// A line comment is not JSDoc.\nfunction undocumented(a) {\n  const b = a;\n  return b;\n}\n",
            "test_in_name": "/** Check that the parser works fine. */\nfunction testParser(a) {\n  const b = a;\n"
                            "  return b;\n}\n",
            "constructor_or_standard_method": "class K {\n  /** Create a new instance of K. */\n  constructor(a) {\n"
                                              "    this.a = a;\n    this.b = a;\n  }\n}\n",
            "short_code": "/** Return the same value again. */\nfunction same(a) { return a; }\n",
            "short_summary": "/**\n * @returns {number} the value of something\n */\nfunction tagsOnly(a) {\n"
                             "  const b = a;\n  return b;\n}\n",
        }
    if lang == "go":
        return {
            "no_doc": "\nfunc undocumented(a int) int {\n\tb := a\n\treturn b\n}\n",
            "no_body": "// asmImpl is implemented in assembly for speed.\nfunc asmImpl(a int) int\n",
            "test_in_name": "// TestParser checks that the parser works.\nfunc TestParser(a int) int {\n\tb := a\n"
                            "\treturn b\n}\n",
            "short_code": "// same returns the same value again.\nfunc same(a int) int { return a }\n",
            "short_summary": "// terse does.\nfunc terse(a int) int {\n\tb := a\n\treturn b\n}\n",
        }
    if lang == "php":
        return {
            "no_doc": "    public function undocumented($a)\n    {\n        return $a;\n    }\n",
            "no_body": "    /** Return the value of the abstract thing. */\n    abstract public function abs($a);\n",
            "test_in_name": "    /** Check that the parser works fine. */\n    public function testParser($a)\n    {\n"
                            "        return $a;\n    }\n",
            "constructor_or_standard_method": "    /** Create a new instance of the thing. */\n    public function "
                                              "__construct($a)\n    {\n        $this->a = $a;\n    }\n",
            "short_code": "    /** Return the same value again. */\n    public function same($a) { return $a; }\n",
            "short_summary": "    /**\n     * {@inheritdoc}\n     */\n    public function inherited($a)\n    {\n"
                             "        return $a;\n    }\n",
        }
    if lang == "ruby":
        return {
            "no_doc": "  def undocumented(a)\n    b = a\n    b\n  end\n",
            "test_in_name": "  # Check that the parser works fine.\n  def test_parser(a)\n    b = a\n    b\n  end\n",
            "constructor_or_standard_method": "  # Create a new instance of the thing.\n  def initialize(a)\n"
                                              "    @a = a\n    @b = a\n  end\n",
            "short_code": "  # Return the same value again.\n  def same(a) = a\n",
            "short_summary": "  # :nodoc:\n  def hidden(a)\n    b = a\n    b\n  end\n",
        }
    raise ValueError(lang)


def _wrap(lang, k, members: str) -> str:
    if lang == "python":
        return members
    if lang == "java":
        return f"package p{k};\n\npublic abstract class Pkg{k} {{\n{members}}}\n"
    if lang == "javascript":
        return members
    if lang == "go":
        return f"package pkg{k}\n\n{members}"
    if lang == "php":
        return f"<?php\nnamespace Pkg{k};\n\nabstract class Pkg{k}\n{{\n{members}}}\n"
    if lang == "ruby":
        return f"module Pkg{k}\n{members}end\n"
    raise ValueError(lang)


EXT = {"python": "py", "java": "java", "javascript": "js", "go": "go", "php": "php", "ruby": "rb"}


def make_tree(root: Path, lang: str, packages: int = 6) -> dict:
    """Writes the tree; returns what the build must produce."""
    expected = {}
    for k in range(packages):
        members = []
        for j in range(2):
            name, summ, body = _kept(lang, k, j)
            members.append(body)
            expected[name] = (f"pkg{k}", summ)
        d = root / f"pkg{k}" / "sub"
        d.mkdir(parents=True)
        (d / f"mod{k}.{EXT[lang]}").write_text(_wrap(lang, k, "\n".join(members)))
    removed = _removed(lang)
    (root / "pkg0" / f"extra.{EXT[lang]}").write_text(_wrap(lang, 0, "\n".join(removed.values())))
    # An exact duplicate of a kept function in another package (same summary and code).
    _, _, dup = _kept(lang, 0, 0)
    (root / "pkg1" / f"copy.{EXT[lang]}").write_text(_wrap(lang, 1, dup))
    # Files and directories that must never be read.
    test_name = {"python": "test_mod.py", "java": "ModTest.java", "javascript": "mod.test.js", "go": "mod_test.go",
                 "php": "ModTest.php", "ruby": "mod_spec.rb"}[lang]
    (root / "pkg2" / test_name).write_text(_wrap(lang, 2, _kept(lang, 90, 0)[2]))
    (root / "pkg3" / "tests").mkdir()
    (root / "pkg3" / "tests" / f"helpers.{EXT[lang]}").write_text(_wrap(lang, 3, _kept(lang, 91, 0)[2]))
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / f"index.{EXT[lang]}").write_text(_wrap(lang, 4, _kept(lang, 92, 0)[2]))
    return {"kept": expected, "removed": set(removed) | {"duplicate"}}


@pytest.mark.parametrize("lang", LANGS)
def test_builder_on_a_small_tree(lang, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    want = make_tree(src, lang)
    cfg = B.BuildConfig(lang=lang, valid_fraction=0.2, test_fraction=0.2, seed=1, split_depth=1)
    report = B.build_corpus(src, out, cfg)

    # Every filter fired exactly once, and nothing else was removed (besides undocumented code).
    removed = report["functions"]["removed"]
    assert set(removed) == want["removed"], removed
    assert all(n == 1 for n in removed.values()), removed
    files = report["files"]["skipped"]
    assert files.get("test_file") == 1 and files.get("pruned_dir:tests") == 1
    assert files.get("pruned_dir:excluded") == 1

    # The expected functions come out with their summaries, each in exactly one split.
    rows = {}
    for split in ("train", "valid", "test"):
        for line in (out / lang / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            assert r["partition"] == split and r["language"] == lang
            rows.setdefault(r["func_name"].rsplit(".", 1)[-1], []).append((split, r))
    assert set(rows) == set(want["kept"])
    for name, found in rows.items():
        assert len(found) == 1, (name, found)
        split, r = found[0]
        pkg, summ = want["kept"][name]
        assert r["repo"] == pkg and r["path"].startswith(pkg + "/")
        assert r["docstring_tokens"] == tokenize_docstring(summ)
        assert " ".join(r["docstring_tokens"]).startswith(" ".join(tokenize_docstring(summ)))
        if split == "train":
            assert name in r["code"] and r["code_tokens"] and name in r["code_tokens"]
            assert "checksum" not in " ".join(r["code_tokens"])  # doc comments never leak into code
        else:
            assert r["code"] == r["original_string"] == "" and r["code_tokens"] == []

    # Splits never share a package, and valid/test are non-empty.
    by_split = {}
    for found in rows.values():
        split, r = found[0]
        by_split.setdefault(split, set()).add(r["repo"])
    assert set(by_split) == {"train", "valid", "test"}
    assert not (by_split["train"] & by_split["valid"] or by_split["train"] & by_split["test"]
                or by_split["valid"] & by_split["test"])
    assert {g for s in report["split"]["groups"].values() for g in s} == {f"pkg{k}" for k in range(6)}

    # The output reads back through the published-layout loaders.
    pairs = load_pairs(out, lang, "train")
    assert len(pairs) == report["functions"]["kept"]["train"]
    ev = load_eval_split(out, lang, "test")
    assert ev.num_queries == report["functions"]["kept"]["test"]
    assert ev.num_codes == report["functions"]["kept"]["valid"] + report["functions"]["kept"]["test"]
    assert (ev.target_index() >= 0).all()
    saved = json.loads((out / lang / "report.json").read_text())
    assert saved["functions"]["removed"] == removed


EXTRACT_CASES = {
    "python": (b'class A:\n    @staticmethod\n    def f(x):\n        r"""Doc \\d here.\n\n        More.\n        """\n'
               b'        return "a" f"b{x}"  # note\n', [("A.f", "Doc \\d here.\n\nMore.")]),
    "java": (b"class A {\n  /** Doc for m.\n   * @param x the x */\n  @Override\n  public int m(int x) { return x; }\n"
             b"  // not javadoc\n  int n() { return 1; }\n}\n", [("A.m", "Doc for m.\n@param x the x"), ("A.n", None)]),
    "javascript": (b"/** Declared. */\nexport function a(x) { return x; }\n/** Bound arrow. */\nconst b = (y) => y;\n"
                   b"/** Member. */\nFoo.prototype.c = function (z) { return z; };\nclass K {\n  /** Method. */\n"
                   b"  static async m() { return 1; }\n}\nmodule.exports = {\n  /** Pair. */\n  p: function () {},\n"
                   b"  /** Shorthand. */\n  q() {}\n};\n[1].map(function (v) { return v; });\n",
                   [("a", "Declared."), ("b", "Bound arrow."), ("c", "Member."), ("K.m", "Method."),
                    ("p", "Pair."), ("q", "Shorthand.")]),
    "go": (b"package p\n\n// Foo returns the foo\n// of x.\n//go:noinline\nfunc Foo(x int) int { return x }\n\n"
           b"var v = 1 // trailing\nfunc NoDoc() {}\n\n// Detached comment.\n\nfunc Detached() {}\n\n"
           b"/* Bar block doc. */\nfunc (r *T[K]) Bar() string { return `raw` }\n",
           [("Foo", "Foo returns the foo\nof x."), ("NoDoc", None), ("Detached", None),
            ("T.Bar", "Bar block doc.")]),
    "php": (b"<?php\nnamespace A;\n/**\n * Does f.\n * @param int $x\n */\nfunction f($x) { return \"a$x\"; }\n"
            b"class C {\n    /** Method doc. */\n    #[Pure]\n    public static function m(): int { return 1; }\n}\n",
            [("f", "Does f.\n@param int $x"), ("C.m", "Method doc.")]),
    "ruby": (b"module M\n  # Adds two\n  # numbers together.\n  def add(a, b)\n    a + b\n  end\n\n"
             b"  # Class method doc.\n  def self.make; end\n  # Private doc.\n  private def hidden\n  end\nend\n"
             b"=begin\nBlock doc.\n=end\ndef top; end\n",
             [("M.add", "Adds two\nnumbers together."), ("M.make", "Class method doc."), ("M.hidden", "Private doc."),
              ("top", "Block doc.")]),
}


@pytest.mark.parametrize("lang", LANGS)
def test_extract_functions_and_doc_comments(lang):
    source, want = EXTRACT_CASES[lang]
    got = [(f.func_name, f.doc) for f in extract_functions(source, lang, "x")]
    assert got == want


def test_python_docstring_is_removed_from_code_only():
    fn = extract_functions(EXTRACT_CASES["python"][0], "python")[0]
    assert '"""' not in fn.code and "Doc" not in " ".join(fn.code_tokens)
    assert fn.original_string.startswith("def f(x):\n    r\"\"\"Doc")
    assert fn.code == 'def f(x):\n    return "a" f"b{x}"  # note'
    assert fn.code_tokens == ["def", "f", "(", "x", ")", ":", "return", '"a"', 'f"b{x}"']


def test_summary_rules():
    assert summary("First line\ncontinues here.\n\nSecond paragraph.") == "First line continues here."
    assert summary("Returns the {@code List} of {@link Foo#bar items}.\n@param x ignored") == \
        "Returns the List of Foo#bar items."
    assert summary("Compute <b>bold</b> things.\n:param x: no") == "Compute bold things."
    assert summary("Do it.\nArgs:\n  x: no") == "Do it."
    assert summary("@return only tags") == ""


def test_test_names_match_identifier_parts_not_substrings():
    assert B.is_test_name("testParser") and B.is_test_name("test_parse") and B.is_test_name("TestCase")
    assert B.is_test_name("HTTPTestServer") and B.is_test_name("_testing")
    assert not B.is_test_name("latest") and not B.is_test_name("attestation") and not B.is_test_name("contest")


def test_group_of_and_assign_splits():
    assert B.group_of("os.py", 1) == "os"
    assert B.group_of("json/decoder.py", 1) == "json"
    assert B.group_of("json/decoder.py", 3) == "json"
    assert B.group_of("crypto/tls/conn.go", 1) == "crypto"
    assert B.group_of("crypto/tls/conn.go", 2) == "crypto/tls"
    sizes = {f"g{i}": 10 for i in range(20)} | {"huge": 500}
    a = B.assign_splits(sizes, 0.1, 0.1, seed=0)
    assert a["huge"] == "train"  # a group bigger than a split never becomes one
    n = {s: sum(sizes[g] for g in sizes if a[g] == s) for s in ("train", "valid", "test")}
    assert n["valid"] == n["test"] == 70 and n["train"] == 560
    assert a == B.assign_splits(sizes, 0.1, 0.1, seed=0)
    assert a != B.assign_splits(sizes, 0.1, 0.1, seed=1)
    # The first pass prefers several small groups to one group that alone fills the split.
    b = B.assign_splits({"big": 100, **{f"s{i}": 5 for i in range(200)}}, 0.1, 0.1, seed=0)
    assert b["big"] == "train"


def test_auto_depth_and_too_few_groups(tmp_path):
    src = tmp_path / "repo"
    for i in range(4):
        for j in range(3):
            _, _, body = _kept("python", i, j)
            d = src / "pkg" / f"sub{i}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"m{j}.py").write_text(body)
    report = B.build_corpus(src, tmp_path / "out", B.BuildConfig(lang="python", min_groups=4))
    assert report["split"]["depth"] == 2 and report["split"]["depth_chosen"] == "auto"
    one = tmp_path / "one"
    (one / "pkg").mkdir(parents=True)
    (one / "pkg" / "m.py").write_text(_kept("python", 0, 0)[2])
    with pytest.raises(Exception, match="group"):
        B.build_corpus(one, tmp_path / "out2", B.BuildConfig(lang="python"))


def test_cli_on_this_repository(tmp_path, capsys):
    """The builder works on a user's own repository: here, this project's own Python code."""
    repo = Path(__file__).resolve().parents[1]
    rc = B.main(["--src", str(repo / "data"), "--out", str(tmp_path), "--lang", "python", "--jobs", "1",
                 "--min-groups", "3", "--origin", "cocohanere_jax"])
    assert rc == 0
    report = json.loads((tmp_path / "python" / "report.json").read_text())
    kept = report["functions"]["kept"]
    assert kept["train"] > 10 and kept["valid"] + kept["test"] > 0
    rows = [json.loads(x) for x in (tmp_path / "python" / "train.jsonl").read_text().splitlines()]
    assert all(r["url"].startswith("cocohanere_jax/") for r in rows)
    every = rows + [json.loads(x) for s in ("valid", "test")
                    for x in (tmp_path / "python" / f"{s}.jsonl").read_text().splitlines()]
    found = {r["func_name"]: r for r in every}
    assert "build_corpus" in found and found["build_corpus"]["path"] == "source_tree/build.py"
    assert B.main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path), "--lang", "go"]) == 2


REAL = Path(__file__).parent / "fixtures" / "source_tree"
# Spot checks read off the real files by hand (the rest is the recorded output in expected.json).
REAL_SPOT = {
    "python": ("fnmatch", "Test whether FILENAME matches PATTERN."),
    "go": ("Search", "Search uses binary search to find and return the smallest index i"),
    "java": ("StringJoiner.add", "Adds a copy of the given {@code CharSequence} value as the next"),
    "javascript": ("Line3.getCenter", "Returns the center of the line segment."),
    "php": ("LazyString.isStringable", "Tells whether the provided value can be cast to string."),
    "ruby": ("Thor.Util.find_by_namespace", "Receives a namespace and search for it in the Thor::Base subclasses."),
}


@pytest.mark.parametrize("lang", LANGS)
def test_real_source_files_give_the_recorded_functions(lang):
    (path,) = [p for p in (REAL / lang).rglob("*") if p.is_file()]
    got = [{"func_name": f.func_name, "start_line": f.start_line, "doc": f.doc}
           for f in extract_functions(path.read_bytes(), lang, path.name) if f.doc]
    assert got == json.loads((REAL / "expected.json").read_text())[lang]
    name, doc_start = REAL_SPOT[lang]
    assert any(g["func_name"] == name and g["doc"].startswith(doc_start) for g in got), got


def test_dedupe_ignores_comments_and_layout(tmp_path):
    src = tmp_path / "src"
    base = 'def f(x):\n    """Compute the value for the caller now."""\n    y = x + 1\n    return y * 2\n'
    variant = ('def f(x):\n    """Compute the value for the caller now."""\n    # a comment the model never sees\n'
               '    y = x  +  1\n\n    return y*2\n')
    for k in range(4):
        (src / f"p{k}").mkdir(parents=True)
        (src / f"p{k}" / "m.py").write_text(_kept("python", k, 0)[2] + _kept("python", k, 1)[2])
    (src / "p0" / "a.py").write_text(base)
    (src / "p1" / "b.py").write_text(variant)
    report = B.build_corpus(src, tmp_path / "out", B.BuildConfig(lang="python", split_depth=1))
    assert report["functions"]["removed"]["duplicate"] == 1


def test_eval_code_that_also_occurs_in_train_is_removed(tmp_path):
    src = tmp_path / "src"
    shared = "    y = x + 1\n    z = y * 2\n    return z - 3\n"
    for k, word in enumerate(("alpha", "beta", "gamma")):
        (src / f"p{k}").mkdir(parents=True)
        (src / f"p{k}" / "m.py").write_text(
            _kept("python", k, 0)[2] + _kept("python", k, 1)[2]
            + f'def shared(x):\n    """Different {word} words for the same code."""\n{shared}')
    report = B.build_corpus(src, tmp_path / "out", B.BuildConfig(lang="python", split_depth=1, valid_fraction=0.3,
                                                                 test_fraction=0.3))
    assert report["split"]["num_groups"] == {"train": 1, "valid": 1, "test": 1}
    assert report["functions"]["removed"] == {"code_in_train": 2}
    assert report["functions"]["kept"] == {"train": 3, "valid": 2, "test": 2}
