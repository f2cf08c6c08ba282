"""The `>>>` examples in the package's docstrings run, so they stay true (as sqlglot's tests/test_docs.py does)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import text2sql

MODULES = sorted(m.name for m in pkgutil.walk_packages(text2sql.__path__, "text2sql."))
MIN_EXAMPLES = 40
"""The package had 49 examples (in 25 docstrings) when this test was written; far fewer means that collection
broke, not that the examples went."""


@pytest.mark.parametrize("name", ["text2sql", *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output)"


def test_the_examples_are_collected():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in ["text2sql", *MODULES]
                   for t in finder.find(importlib.import_module(name)))
    assert examples >= MIN_EXAMPLES, examples
