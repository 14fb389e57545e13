"""The Python examples in README.md and docs/ run as written.

Each file's ```python blocks run in order in one namespace, as a reader pastes them into one
session (the "after" block of a conversion uses the model of its "before" block). A block right
after the line ``<!-- fragment -->`` is a sketch of code shown in full later and is not run. A
block that imports a peer library that is not installed skips the file, naming the library.
"""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"
PEERS = ("spikingjelly", "snntorch", "norse")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block not marked as a fragment."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() != FRAGMENT:
            blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n<!-- fragment -->\n```python\ny\n```\n```python\nz = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "z = 2\n")]


def _readme_inverse(ns: dict) -> None:
    """The README's first example: the inverse gives x back on its grid, and the rest state."""
    x, x_back, state0 = ns["x"], ns["x_back"], ns["state0"]
    grid = x_back.detach() * 2**16  # alpha = 1, float32: x on a 2**-16 grid
    assert torch.equal(grid, grid.round())
    assert float((x_back - x).detach().abs().max()) <= 2**-17
    assert state0.v.abs().max() == 0  # the forward started from rest


CLAIMS = {("README.md", 0): _readme_inverse}
"""Checks of what an example claims, run right after its block (before a later block can
skip the file for a missing peer library)."""


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks((ROOT / d).read_text())])
def test_examples_run(doc):
    namespace = {"__name__": "__docs__"}
    torch.manual_seed(0)
    for i, (line, source) in enumerate(python_blocks((ROOT / doc).read_text())):
        try:
            exec(compile(source, f"{doc}:{line}", "exec"), namespace)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in PEERS:
                pytest.skip(f"{doc}:{line} needs {e.name.split('.')[0]}, not installed")
            raise
        if (doc, i) in CLAIMS:
            CLAIMS[(doc, i)](namespace)
