"""The README's usage example runs as written."""

from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_example_runs():
    text = README.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "no python block in README.md"
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
