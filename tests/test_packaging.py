"""The wheel a user installs carries the data, the licences and both packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [built] = out.glob("sgsd_verl-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_wheel_ships_data_with_licences(wheel_names):
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sgsd" / "data").rglob("*") if p.is_file()}
    assert shipped, "no data under sgsd/data"
    assert shipped <= wheel_names, sorted(shipped - wheel_names)
    assert "sgsd/data/skill_banks/LICENSE.official-sgsd" in wheel_names
    assert "sgsd/data/train/LICENSE.math-evaluation-harness" in wheel_names
    assert "sgsd/data/skills/math.json" in wheel_names  # a data folder of its own (namespace package)


def test_wheel_has_library_recipe_and_cli(wheel, wheel_names):
    assert {"sgsd/objective.py", "sgsd/cli/__init__.py", "sgsd/cli/bank.py", "recipe/sgsd/__init__.py"} <= wheel_names
    assert "recipe/__init__.py" not in wheel_names  # namespace package, shared with TransferQueue
    [entry_points] = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "sgsd = sgsd.cli:main" in text


def test_the_gpu_extra_installs_without_building_against_torch(wheel):
    """flash-attn is only an sdist whose setup.py imports torch: inside the `gpu` extra pip's
    isolated build fails ("No module named 'torch'"). The README installs it after torch,
    with --no-build-isolation, as flash-attn's authors document."""
    with zipfile.ZipFile(wheel) as zf:
        [metadata] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line for line in zf.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    gpu = [line for line in requires if 'extra == "gpu"' in line]
    assert any("vllm==0.24.0" in line for line in gpu) and not any("flash" in line for line in gpu)
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## On GPUs"):readme.index("```", readme.index("```", readme.index("## On GPUs")) + 3)]
    lines = [line for line in block.splitlines() if line.startswith("pip install")]
    assert lines[0].startswith('pip install -e ".[verl,gpu]"')
    assert lines[1].startswith("pip install flash-attn==2.8.3 --no-build-isolation")
