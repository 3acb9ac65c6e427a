"""Dependency warnings are silenced where medpg triggers them, and only there."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from medpg.dependency_warnings import ranx_compiling_quietly

_FRESH_RANX = """
import warnings
from pathlib import Path
from medpg.dependency_warnings import ranx_compiling_quietly

with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    from ranx import Qrels, Run, evaluate
    with ranx_compiling_quietly():
        evaluate(Qrels({"q": {"d": 1}}), Run({"q": {"d": 1.0, "e": 0.5}}), ["ndcg@10"])
    warnings.warn("still shown", UserWarning)
names = sorted({type(w.message).__name__ for w in seen})
print(names)
assert "NumbaTypeSafetyWarning" not in names, names
assert "UserWarning" in names, names
assert any(Path(__import__("os").environ["NUMBA_CACHE_DIR"]).rglob("*.nbi")), "nothing was compiled"
"""


@pytest.mark.slow
def test_ranx_compiling_on_a_fresh_install_prints_no_numba_warning(tmp_path: Path) -> None:
    # A fresh numba cache makes ranx compile its kernels, as on a fresh clone.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_RANX], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unsafe cast" not in done.stderr


def test_the_ranx_filter_leaves_other_warnings_alone() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with ranx_compiling_quietly():
            warnings.warn("a medpg warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a medpg warning"]
