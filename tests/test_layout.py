"""Packaging facts that break silently: a light library, and our packages winning name clashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_MODULES = ["sgsd", "sgsd.atomic", "sgsd.bank", "sgsd.cli", "sgsd.datasets", "sgsd.objective",
                   "sgsd.eval", "sgsd.eval_metrics", "sgsd.eval_models", "sgsd.eval_report",
                   "sgsd.prompts", "sgsd.retrieval", "sgsd.tiny_model", "sgsd.token_mask", "sgsd.verifier"]


def _fresh(code: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_library_imports_without_verl_ray_or_vllm():
    code = (
        "import importlib, json, sys\n"
        f"for m in {LIBRARY_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'verl', 'ray', 'vllm', 'sentence_transformers', "
        "'math_verify', 'transformers'})\n"
        "print(json.dumps(heavy))\n"
    )
    # verl and ray are installed in the test environment, so this would catch a stray import.
    assert _fresh(code, ROOT) == []


def test_our_packages_win_over_verl_and_transferqueue_top_level_names(tmp_path):
    """verl's wheel installs top-level `scripts`/`tests`; TransferQueue a `recipe` folder."""
    code = (
        "import json, recipe.sgsd, sgsd\n"
        "print(json.dumps({'recipe': recipe.sgsd.__file__, 'sgsd': sgsd.__file__}))\n"
    )
    for cwd in (ROOT, tmp_path):  # from the checkout and from anywhere else
        found = _fresh(code, cwd)
        for name, path in found.items():
            assert Path(path).resolve().is_relative_to(ROOT), f"{name} resolved to {path} from cwd={cwd}"
    assert Path(__import__("tests").__file__).resolve().is_relative_to(ROOT)
