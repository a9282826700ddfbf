"""Tree-sitter extraction of functions and their doc comments from one source file.

`extract_functions(source, lang, path)` returns every function-like definition of the file with its
doc (None when it has none), the CodeSearchNet fields derived from it and the facts the filters in
`cocohanere_data.source_tree.build` need (body present, parse error). It filters nothing itself.

Doc comments, per language:
* Python: the docstring (first statement of the body, a string literal); it is removed from `code`
  and `code_tokens`, kept in `original_string`.
* Java, JavaScript, PHP: a `/** ... */` comment directly before the definition (only whitespace
  between; annotations/attributes/`export` belong to the definition).
* Go, Ruby: the run of line comments (`//`, `#`) directly above the definition with no blank line
  in between, or one block comment (`/* */`, `=begin/=end`). Go directives (`//go:...`) and Ruby
  tool directives (`# rubocop:...`) are dropped from the text.
"""

from __future__ import annotations

import bisect
import dataclasses
import textwrap
import warnings

from cocohanere_data.source_tree import docs
from cocohanere_data.source_tree.languages import LanguageSpec, parser_for, spec_for


@dataclasses.dataclass
class Function:
    path: str
    name: str
    func_name: str              # qualified: Class.method, Receiver.Method
    start_line: int             # 1-based, inclusive
    end_line: int
    doc: str | None             # doc text without comment markers; None if there is no doc comment
    original_string: str
    code: str                   # original_string minus the Python docstring, dedented
    code_tokens: list[str]
    has_body: bool
    has_error: bool


_JS_ANON = frozenset({"function_expression", "function", "arrow_function", "generator_function"})


def extract_functions(source: bytes | str, lang: str, path: str = "") -> list[Function]:
    """All function definitions of one file, in source order."""
    spec = spec_for(lang)
    if isinstance(source, str):
        source = source.encode("utf-8")
    tree = parser_for(lang).parse(source)
    comments, found = _walk(tree.root_node, spec)
    comment_ends = [c.end_byte for c in comments]
    out = []
    for node, scope in found:
        named = _name_and_anchor(node, spec)
        if named is None:
            continue
        name, anchor, span = named
        qual = ".".join([*scope, name]) if scope else name
        if spec.name == "go" and node.type == "method_declaration":
            recv = _go_receiver(node)
            qual = f"{recv}.{name}" if recv else name
        out.append(_build(node, span, anchor, name, qual, spec, source, comments, comment_ends, path))
    return out


def _walk(root, spec: LanguageSpec):
    """Comments and (function node, enclosing class names) in document order."""
    comments, found = [], []
    stack = [(root, ())]
    while stack:
        node, scope = stack.pop()
        t = node.type
        if t in spec.comment_types:
            comments.append(node)
            continue
        if t in spec.function_types:
            found.append((node, scope))
        if t in spec.class_types:
            cname = node.child_by_field_name("name")
            if cname is not None:
                scope = (*scope, _text(cname))
        children = node.children
        for child in reversed(children):
            stack.append((child, scope))
    comments.sort(key=lambda n: n.start_byte)
    found.sort(key=lambda item: item[0].start_byte)
    return comments, found


def _text(node) -> str:
    return node.text.decode("utf-8", errors="replace")


def _name_and_anchor(node, spec: LanguageSpec):
    """(simple name, node the doc comment precedes, node whose text is the code), or None.

    Anonymous JavaScript functions are named by what they are bound to (`const f = ...`,
    `obj.f = ...`, `{f: ...}`); the code then includes that binding. Unbound ones are skipped.
    """
    lang = spec.name
    if lang == "javascript":
        parent = node.parent
        if node.type in _JS_ANON:
            if parent is None:
                return None
            if parent.type == "variable_declarator" and parent.child_by_field_name("value") == node:
                name = parent.child_by_field_name("name")
                decl = parent.parent
                anchor = decl if decl is not None and decl.named_child_count == 1 else parent
                if anchor.parent is not None and anchor.parent.type == "export_statement":
                    anchor = anchor.parent
                return (_text(name), anchor, parent) if name is not None and name.type == "identifier" else None
            if parent.type == "assignment_expression" and parent.child_by_field_name("right") == node:
                left = parent.child_by_field_name("left")
                if left is None:
                    return None
                if left.type == "member_expression":
                    left = left.child_by_field_name("property")
                if left is None or left.type not in ("identifier", "property_identifier"):
                    return None
                stmt = parent.parent
                anchor = stmt if stmt is not None and stmt.type == "expression_statement" else parent
                return _text(left), anchor, parent
            if parent.type == "pair" and parent.child_by_field_name("value") == node:
                key = parent.child_by_field_name("key")
                if key is None:
                    return None
                return _text(key).strip("'\"`"), parent, parent
            return None
        name = node.child_by_field_name("name")
        if name is None:
            return None
        anchor = parent if parent is not None and parent.type == "export_statement" else node
        return _text(name), anchor, node
    name = node.child_by_field_name("name")
    if name is None:
        return None
    anchor = node
    if lang == "ruby":
        parent = node.parent
        if parent is not None and parent.type == "argument_list" and parent.parent is not None \
                and parent.parent.type == "call":
            anchor = parent.parent  # `private def foo`
        if node.type == "singleton_method":
            obj = node.child_by_field_name("object")
            if obj is not None and obj.type != "self":
                return f"{_text(obj)}.{_text(name)}", anchor, node
    return _text(name), anchor, node


def _go_receiver(node) -> str:
    recv = node.child_by_field_name("receiver")
    if recv is None:
        return ""
    for param in recv.named_children:
        typ = param.child_by_field_name("type")
        if typ is not None:
            t = _text(typ).lstrip("*")
            return t.split("[", 1)[0]
    return ""


def _build(node, span, anchor, name, qual, spec, source: bytes, comments, comment_ends, path) -> Function:
    doc, doc_node = None, None
    if spec.doc_style == "docstring":
        doc_node = _python_docstring_node(node)
        if doc_node is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old docstrings
                doc = docs.python_docstring(_text(doc_node.named_children[0]))
    else:
        doc = _doc_comment(anchor, spec, source, comments, comment_ends)

    start, end = span.start_byte, span.end_byte
    indent = _leading_indent(source, start)
    original = _dedent(indent + source[start:end])
    if doc_node is not None:
        ds, de = _expand_to_lines(source, doc_node.start_byte, doc_node.end_byte)
        code = _dedent(indent + source[start:ds] + source[de:end])
    else:
        code = original
    body = node.child_by_field_name(spec.body_field)
    has_body = body is not None or spec.name in ("python", "ruby") or node.type in _JS_ANON
    return Function(
        path=path,
        name=name,
        func_name=qual,
        start_line=span.start_point[0] + 1,
        end_line=span.end_point[0] + 1,
        doc=doc,
        original_string=original,
        code=code,
        code_tokens=_code_tokens(span, spec, skip=doc_node),
        has_body=has_body,
        has_error=node.has_error,
    )


def _python_docstring_node(func):
    body = func.child_by_field_name("body")
    if body is None:
        return None
    for child in body.named_children:
        if child.type in ("comment",):
            continue
        if child.type == "expression_statement" and child.named_child_count == 1 \
                and child.named_children[0].type == "string":
            return child
        return None
    return None


def _doc_comment(anchor, spec: LanguageSpec, source: bytes, comments, comment_ends) -> str | None:
    i = bisect.bisect_right(comment_ends, anchor.start_byte) - 1
    if i < 0:
        return None
    c = comments[i]
    gap = source[c.end_byte:anchor.start_byte]
    if gap.strip():
        return None
    text = _text(c)
    if spec.doc_style == "block":
        if not text.startswith("/**") or text.startswith("/**/"):
            return None
        return docs.strip_block_comment(text)
    # Line style (Go, Ruby): adjacent lines only, comment must start its line.
    if gap.count(b"\n") > 1 or not _starts_line(source, c.start_byte):
        return None
    if text.startswith("/*"):
        return docs.strip_block_comment(text)
    if text.startswith("=begin"):
        return docs.strip_ruby_block(text)
    run = [c]
    while i > 0:
        prev = comments[i - 1]
        between = source[prev.end_byte:run[0].start_byte]
        ptext = _text(prev)
        if between.strip() or between.count(b"\n") != 1 or not _starts_line(source, prev.start_byte) \
                or ptext.startswith("/*") or ptext.startswith("=begin"):
            break
        run.insert(0, prev)
        i -= 1
    prefix = ("//",) if spec.name == "go" else ("#",)
    lines = [_text(n) for n in run]
    lines = [t for t in lines if not _is_directive(t, spec.name)]
    if not lines:
        return None  # only tool directives (//go:noinline, # rubocop:disable): not documentation
    return docs.strip_line_comments(lines, prefix)


def _is_directive(comment: str, lang: str) -> bool:
    if lang == "go":
        return comment.startswith("//go:") or comment.startswith("//line ") or comment.startswith("// +build") \
            or comment.startswith("//export ")
    return comment.lstrip("# ").startswith(("rubocop:", "frozen_string_literal:", "encoding:", "-*-"))


def _starts_line(source: bytes, pos: int) -> bool:
    line_start = source.rfind(b"\n", 0, pos) + 1
    return not source[line_start:pos].strip()


def _leading_indent(source: bytes, pos: int) -> bytes:
    line_start = source.rfind(b"\n", 0, pos) + 1
    prefix = source[line_start:pos]
    return prefix if not prefix.strip() else b""


def _expand_to_lines(source: bytes, s: int, e: int) -> tuple[int, int]:
    """Widens [s, e) to whole lines when nothing else shares them."""
    line_start = source.rfind(b"\n", 0, s) + 1
    nl = source.find(b"\n", e)
    line_end = len(source) if nl < 0 else nl + 1
    if not source[line_start:s].strip() and not source[e:line_end].strip():
        return line_start, line_end
    return s, e


def _dedent(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return textwrap.dedent(text).strip("\n")


def _code_tokens(node, spec: LanguageSpec, skip=None) -> list[str]:
    tokens: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if skip is not None and n.start_byte == skip.start_byte and n.end_byte == skip.end_byte \
                and n.type == skip.type:
            continue
        t = n.type
        if t in spec.comment_types:
            continue
        if t in spec.string_types or n.child_count == 0:
            if n.is_missing or n.end_byte == n.start_byte:
                continue
            text = _text(n)
            if text.strip():
                tokens.append(text)
            continue
        stack.extend(reversed(n.children))
    return tokens
