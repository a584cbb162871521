"""The examples in docs/parser_api.md and parser_api's docstrings run as written."""

from __future__ import annotations

import doctest
from pathlib import Path

import parser_api

DOCS = Path(__file__).resolve().parent.parent / "docs" / "parser_api.md"


def test_guide_examples() -> None:
    result = doctest.testfile(str(DOCS), module_relative=False)
    assert result.attempted > 10 and result.failed == 0


def test_package_docstring_examples() -> None:
    result = doctest.testmod(parser_api)
    assert result.attempted > 0 and result.failed == 0
