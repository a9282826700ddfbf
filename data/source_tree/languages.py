"""What differs between languages: file names, tree-sitter node types, doc comment style.

Grammar wheels (pinned in requirements.txt): tree-sitter==0.26.1, tree-sitter-python==0.25.0,
tree-sitter-java==0.23.5, tree-sitter-javascript==0.25.0, tree-sitter-go==0.25.0,
tree-sitter-php==0.25.1 (`language_php()`, which accepts `<?php` files with inline HTML) and
tree-sitter-ruby==0.23.1. Node type names below are those of these versions.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
    name: str
    extensions: tuple[str, ...]
    module: str                      # grammar wheel
    language_fn: str                 # function of `module` returning the language pointer
    function_types: frozenset[str]   # nodes extracted as functions
    # "docstring": Python string in the body; "block": /** */ before the definition;
    # "line": a run of line comments (or one block comment) directly above the definition.
    doc_style: str
    class_types: frozenset[str]      # enclosing nodes whose name qualifies func_name
    string_types: frozenset[str]     # kept whole as one code token (as CodeSearchNet does)
    comment_types: frozenset[str]
    test_file: re.Pattern            # file names that hold tests
    # Constructors and standard methods CodeSearchNet removes (e.g. __str__, toString).
    boilerplate: frozenset[str] = frozenset()
    body_field: str = "body"
    # Generated code: minified files and bundles (which repeat the sources they are built from).
    generated_file: re.Pattern | None = None
    generated_dirs: frozenset[str] = frozenset()


_COMMENTS = frozenset({"comment", "block_comment", "line_comment"})

SPECS: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        name="python",
        extensions=(".py",),
        module="tree_sitter_python",
        language_fn="language",
        function_types=frozenset({"function_definition"}),
        doc_style="docstring",
        class_types=frozenset({"class_definition"}),
        string_types=frozenset({"string"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^(test_.*|.*_tests?)\.py$"),
    ),
    "java": LanguageSpec(
        name="java",
        extensions=(".java",),
        module="tree_sitter_java",
        language_fn="language",
        # Constructors are left out, as in CodeSearchNet.
        function_types=frozenset({"method_declaration"}),
        doc_style="block",
        class_types=frozenset({"class_declaration", "interface_declaration", "enum_declaration",
                               "record_declaration", "annotation_type_declaration"}),
        string_types=frozenset({"string_literal", "character_literal", "text_block"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^.*Tests?\.java$"),
        boilerplate=frozenset({"toString", "hashCode", "equals", "finalize", "clone"}),
    ),
    "javascript": LanguageSpec(
        name="javascript",
        extensions=(".js", ".mjs", ".cjs", ".jsx"),
        module="tree_sitter_javascript",
        language_fn="language",
        function_types=frozenset({"function_declaration", "generator_function_declaration",
                                  "function_expression", "function", "generator_function",
                                  "arrow_function", "method_definition"}),
        doc_style="block",
        class_types=frozenset({"class_declaration", "class"}),
        string_types=frozenset({"string", "template_string", "regex"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^.*\.(test|spec)\.[cm]?jsx?$"),
        boilerplate=frozenset({"constructor", "toString"}),
        generated_file=re.compile(r"^.*[.-](min|bundle)\.[cm]?js$"),
        generated_dirs=frozenset({"dist", "build"}),
    ),
    "go": LanguageSpec(
        name="go",
        extensions=(".go",),
        module="tree_sitter_go",
        language_fn="language",
        function_types=frozenset({"function_declaration", "method_declaration"}),
        doc_style="line",
        class_types=frozenset(),
        string_types=frozenset({"interpreted_string_literal", "raw_string_literal", "rune_literal"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^.*_test\.go$"),
    ),
    "php": LanguageSpec(
        name="php",
        extensions=(".php",),
        module="tree_sitter_php",
        language_fn="language_php",
        function_types=frozenset({"function_definition", "method_declaration"}),
        doc_style="block",
        class_types=frozenset({"class_declaration", "interface_declaration", "trait_declaration",
                               "enum_declaration"}),
        string_types=frozenset({"string", "encapsed_string", "heredoc", "nowdoc", "shell_command_expression"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^.*Test\.php$"),
    ),
    "ruby": LanguageSpec(
        name="ruby",
        extensions=(".rb",),
        module="tree_sitter_ruby",
        language_fn="language",
        function_types=frozenset({"method", "singleton_method"}),
        doc_style="line",
        class_types=frozenset({"class", "module", "singleton_class"}),
        string_types=frozenset({"string", "heredoc_body", "regex", "subshell", "delimited_symbol"}),
        comment_types=_COMMENTS,
        test_file=re.compile(r"^.*_(spec|test)\.rb$|^test_.*\.rb$"),
        boilerplate=frozenset({"initialize", "to_s", "inspect"}),
    ),
}

LANGUAGES = tuple(sorted(SPECS))


def spec_for(lang: str) -> LanguageSpec:
    try:
        return SPECS[lang]
    except KeyError:
        raise ValueError(f"unsupported language {lang!r}; supported: {', '.join(LANGUAGES)}") from None


@functools.cache
def parser_for(lang: str):
    """A tree-sitter Parser for `lang` (one per process)."""
    import tree_sitter

    spec = spec_for(lang)
    module = importlib.import_module(spec.module)
    language = tree_sitter.Language(getattr(module, spec.language_fn)())
    return tree_sitter.Parser(language)


def grammar_versions() -> dict[str, str]:
    """Installed versions of tree-sitter and the grammar wheels (recorded in corpus reports)."""
    from importlib import metadata

    out = {}
    for dist in ["tree-sitter"] + [SPECS[lang].module.replace("_", "-") for lang in LANGUAGES]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
