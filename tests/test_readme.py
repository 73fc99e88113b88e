"""The README's Python example runs as written (with real arrays for its placeholders)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_custom_loop_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "make_train_step" in b)
    rng = np.random.default_rng(0)
    b, length = 4, 6
    namespace = {
        "ids": rng.integers(1, 5000, (b, length)).astype(np.int32),
        "lengths": np.array([6, 3, 1, 5], np.int32),
        "tags": rng.integers(0, 17, (b, length)).astype(np.int32),
        "y": rng.integers(0, 3, (b,)).astype(np.int32),
        "tag_mask": np.ones((b, length), np.float32),
    }
    exec(compile(example, "README.md", "exec"), namespace)
    metrics = namespace["metrics"]
    assert metrics["losses"].shape == (2,)
    assert np.isfinite(np.asarray(metrics["losses"])).all()
    assert int(namespace["state"].step) == 1
