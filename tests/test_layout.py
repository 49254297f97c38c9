"""Packaging facts that break silently: a light library, and our packages winning name clashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def library_modules() -> list[str]:
    """Every module of the library, found on disk (a new module is covered without a list)."""
    modules = []
    for path in sorted((ROOT / "sgsd").rglob("*.py")):
        if path.name == "__main__.py":  # runs the CLI when imported
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_the_module_list_is_the_library():
    modules = library_modules()
    assert {"sgsd", "sgsd.bank", "sgsd.cli", "sgsd.eval.runner", "sgsd.llm.vllm_client", "sgsd.plot"} <= set(modules)
    assert len(modules) == len(set(modules)) >= 30


def _fresh(code: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_library_imports_without_verl_ray_or_vllm():
    """Every module, imported one after another in a fresh interpreter: none pulls in verl,
    ray or vllm, nor the heavy libraries only some commands need (imported in functions).
    The report names the first module that does."""
    code = (
        "import importlib, json, sys\n"
        "report = {}\n"
        f"for m in {library_modules()!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(m)\n"
        "    heavy = sorted({n.split('.')[0] for n in sys.modules} & {'verl', 'ray', 'vllm', 'sentence_transformers', "
        "'math_verify', 'transformers', 'matplotlib'})\n"
        "    if heavy: report[m] = heavy; break\n"
        "print(json.dumps(report))\n"
    )
    # verl and ray are installed in the test environment, so this would catch a stray import.
    assert _fresh(code, ROOT) == {}


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
