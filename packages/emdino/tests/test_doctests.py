"""The examples in the docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "emdino",
    "emdino.backbone",
    "emdino.embed",
    "emdino.features",
    "emdino.loader",
    "emdino.models.pos_embed",
    "emdino.models.registry",
    "emdino.models.vit",
    "emdino.viz",
    "emdino.weights.convert",
    "emdino.weights.files",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
