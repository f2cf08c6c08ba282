"""The shape of the package, read from its code with `ast`: imports go down the pipeline, never around in a circle.

Every `import`/`from ... import` of a `text2sql` module counts, wherever it sits (module top, inside a function,
under TYPE_CHECKING): a function-level import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "text2sql"
MAX_LINES = 600

STAGES = [
    ("base", ["text2sql", "text2sql.config", "text2sql.errors", "text2sql.files", "text2sql.progress",
              "text2sql.vocab"]),
    ("catalog", ["text2sql.catalog", "text2sql.lakehouse"]),
    ("warehouse", ["text2sql.warehouse"]),  # the package: engines, guard (the SQL check), sandbox (the workers)
    ("data", ["text2sql.data"]),  # the package and every module in it (compare: result comparison, eval uses it)
    ("prompt", ["text2sql.prompt"]),
    ("train", ["text2sql.models", "text2sql.train", "text2sql.train_speed", "text2sql.distributed", "text2sql.merge"]),
    ("select", ["text2sql.select"]),  # candidate selection: needs only the sandbox; generate, evaluate, serve use it
    ("generate", ["text2sql.generate", "text2sql.engine", "text2sql.attention"]),
    ("evaluate", ["text2sql.evaluate"]),
    ("checkpoints", ["text2sql.checkpoints"]),  # dev EX at each save: a train callback made of generate + evaluate
    # the serve package (app, openai, pipeline, backends, engine_backend, guard) and the feedback store it writes
    ("serve", ["text2sql.serve", "text2sql.feedback"]),
    ("top", ["text2sql.cli", "text2sql.cli_common", "text2sql.cli_data", "text2sql.pipeline", "text2sql.quiet", "text2sql.synthesize"]),
]
"""Pipeline order, lowest first: a module may import from its own stage and the stages before it."""
OVERSIZED = {
}
"""Modules known to be over MAX_LINES, with the work that brings them under; each is an xfail, not a pass."""
KNOWN_BACKWARD: dict[tuple[str, str], str] = {}
"""Imports known to go up the pipeline (and so close a cycle): left out of the strict tests below, and listed by
`test_known_violations_are_gone` (an xfail) until the work named here removes them."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The text2sql modules `name` imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or is)
                base = name.split(".")
                base = base[: len(base) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from text2sql import prompt` imports the module text2sql.prompt; `from text2sql import __version__`
            # only the package.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import text2sql.data.store as s` -> text2sql.data.store
                target = target.rpartition(".")[0]
            if target.startswith("text2sql") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
CHECKED = {name: {t for t in targets if (name, t) not in KNOWN_BACKWARD} for name, targets in GRAPH.items()}
"""The graph the strict tests check: GRAPH less KNOWN_BACKWARD."""


def _stage(name: str) -> int:
    for rank, (_, prefixes) in enumerate(STAGES):
        if any(name == p or (p != "text2sql" and name.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"{name} is in no stage: add it to STAGES in tests/test_architecture.py")


def test_the_graph_is_read_from_the_code():
    """The reader finds imports at every depth, so the other tests are not vacuous."""
    assert "text2sql.errors" in GRAPH["text2sql.config"]  # module top
    assert "text2sql.prompt" in GRAPH["text2sql.train"]  # inside a function
    assert "text2sql.data.store" in GRAPH["text2sql.data.validate"]  # under TYPE_CHECKING
    assert "text2sql.generate" in GRAPH["text2sql.evaluate.release"]  # inside a function
    assert "text2sql.data.compare" in GRAPH["text2sql.evaluate"]  # a package __init__ re-exporting
    assert sum(map(len, GRAPH.values())) > 80


def test_every_module_has_a_stage():
    for name in MODULES:
        _stage(name)


def test_no_import_from_a_lower_stage_to_a_higher_one():
    backward = sorted(
        f"{a} ({STAGES[_stage(a)][0]}) imports {b} ({STAGES[_stage(b)][0]})"
        for a, targets in CHECKED.items() for b in targets if _stage(b) > _stage(a)
    )
    assert not backward, "\n".join(backward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(CHECKED) == []


def test_the_warehouse_package_imports_downward():
    """Inside the warehouse stage, as its docstring says: engines, then guard (the SQL check), then sandbox."""
    order = ["text2sql.warehouse.engines", "text2sql.warehouse.guard", "text2sql.warehouse.sandbox"]
    for rank, name in enumerate(order):
        assert GRAPH[name] & set(order) <= set(order[:rank]), f"{name} imports {GRAPH[name] & set(order[rank:])}"


@pytest.mark.xfail(bool(KNOWN_BACKWARD), reason="; ".join(KNOWN_BACKWARD.values()) or "none", strict=False)
def test_known_violations_are_gone():
    """Passes once every KNOWN_BACKWARD import is gone: then empty KNOWN_BACKWARD (the strict tests take over)."""
    still = sorted(f"{a} imports {b}" for a, b in KNOWN_BACKWARD if b in GRAPH.get(a, ()))
    assert not still, "\n".join(still)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_the_line_limit(name, request):
    if name in OVERSIZED:
        request.applymarker(pytest.mark.xfail(reason=OVERSIZED[name], strict=False))
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (limit {MAX_LINES}): split it by responsibility"


VOCAB_TUPLES = ("METHODS", "EVAL_MODES", "SPLITS", "DIFFICULTIES", "WAREHOUSE_ENGINES")


def test_each_vocabulary_is_defined_once():
    """A literal tuple/list/set holding a whole vocabulary, or the dialect or tolerance as a bare constant,
    outside vocab.py is a second definition: import it from text2sql.vocab instead."""
    from text2sql import vocab

    words = {name: set(getattr(vocab, name)) for name in VOCAB_TUPLES}
    copies = []
    for name, path in MODULES.items():
        if name == "text2sql.vocab":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                    isinstance(e, ast.Constant) for e in node.elts):
                values = {e.value for e in node.elts}
                copies += [f"{name}:{node.lineno} {v}" for v, w in words.items() if w <= values]
            if isinstance(node, ast.keyword) and node.arg in ("dialect", "read", "write") and \
                    isinstance(node.value, ast.Constant) and node.value.value == vocab.DIALECT:
                copies.append(f"{name}:{node.value.lineno} {node.arg}={vocab.DIALECT!r}")
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and \
                    node.value.value in (vocab.REL_TOL, vocab.DIALECT) and not isinstance(node.value.value, bool):
                copies.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert not copies, "\n".join(copies)
