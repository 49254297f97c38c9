"""scripts/setup_env.sh skips pip when the venv already matches its pinned inputs.

Run for real against a throwaway project root (a copy of pyproject.toml, the constraints file and
setup_env.sh) and a throwaway venv whose `bin/python` is a stand-in: `-c` runs the real
interpreter (the python-version probe), anything else (pip, pytest) is recorded and exits 0, or
fails when FAKE_FAIL matches its arguments. The real .venv is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".sgsd-setup-stamp"
FAKE_PYTHON = f"""#!/bin/sh
if [ "$1" = "-c" ]; then
  [ -n "$FAKE_BROKEN" ] && exit 1
  [ -n "$FAKE_PYVER" ] && {{ echo "$FAKE_PYVER"; exit 0; }}
  exec {sys.executable} "$@"
fi
echo "$*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then
  case "$*" in *"$FAKE_FAIL"*) echo "fake pip: no" >&2; exit 1;; esac
fi
exit 0
"""


class Setup:
    """A copied project root and a fake venv; run() calls setup_env.sh, returning the new fake calls."""

    def __init__(self, tmp: Path):
        self.root = tmp / "project"
        (self.root / "scripts").mkdir(parents=True)
        for rel in ("pyproject.toml", "scripts/setup_env.sh", "scripts/constraints-cpu.txt"):
            shutil.copy(ROOT / rel, self.root / rel)
        self.venv = tmp / "venv"
        (self.venv / "bin").mkdir(parents=True)
        python = self.venv / "bin" / "python"
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
        self.log = tmp / "calls.log"
        self.log.touch()
        self.stamp = self.venv / STAMP

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SGSD_FORCE_SETUP", "FAKE_FAIL", "FAKE_PYVER", "FAKE_BROKEN")}
        env.update(SGSD_VENV=str(self.venv), FAKE_LOG=str(self.log), **extra)
        return env

    def run(self, *args: str, script: Path | None = None, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        before = len(self.log.read_text().splitlines())
        done = subprocess.run(["bash", str(script or self.root / "scripts" / "setup_env.sh"), *args],
                              capture_output=True, text=True, env=self.env(**env), timeout=30)
        return done, self.log.read_text().splitlines()[before:]

    def installs(self, *args: str, **env: str) -> list[str]:
        done, calls = self.run(*args, **env)
        assert done.returncode == 0, done.stderr
        return [c for c in calls if c.startswith("-m pip install")]


@pytest.fixture
def setup(tmp_path) -> Setup:
    return Setup(tmp_path)


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def test_first_call_installs_second_call_skips(setup):
    calls = setup.installs()
    assert len(calls) == 2, calls  # torch first, then the project, pinned
    assert calls[0].endswith(" torch==2.13.0")
    assert f"-c {setup.root}/scripts/constraints-cpu.txt -e {setup.root}[test]" in calls[1]
    assert setup.stamp.read_text().strip()

    done, calls = setup.run()
    assert done.returncode == 0 and calls == [], (calls, done.stderr)
    assert done.stdout.startswith("[setup] venv is up to date (sgsd-verl[test], torch==2.13.0, stamp ")
    assert len(done.stdout.splitlines()) == 1


def test_source_edits_need_no_reinstall(setup):
    """The install is editable: a file of the library changing is no input."""
    (setup.root / "sgsd").mkdir()
    (setup.root / "sgsd" / "mod.py").write_text("x = 1\n")
    assert len(setup.installs()) == 2
    (setup.root / "sgsd" / "mod.py").write_text("x = 2\n")
    assert setup.installs() == []


@pytest.mark.parametrize("change", ["pyproject", "constraints", "setup_env", "extra", "python", "force"])
def test_a_changed_input_reinstalls(setup, change):
    assert len(setup.installs()) == 2 and setup.installs() == []
    args, env = [], {}
    if change == "pyproject":
        _edit(setup.root / "pyproject.toml")
    elif change == "constraints":
        _edit(setup.root / "scripts" / "constraints-cpu.txt")
    elif change == "setup_env":
        _edit(setup.root / "scripts" / "setup_env.sh")
    elif change == "extra":
        args = ["plot"]
    elif change == "python":
        env = {"FAKE_PYVER": "3.99.0 (a rebuilt venv)"}
    else:
        env = {"SGSD_FORCE_SETUP": "1"}
    calls = setup.installs(*args, **env)
    assert len(calls) == 2, (change, calls)
    if change == "extra":
        assert calls[1].endswith(f"{setup.root}[plot]")
    if change != "force":  # the new inputs are now the stamped ones
        assert setup.installs(*args, **env) == []


@pytest.mark.parametrize("failing", ["torch==", " -e "])
def test_a_failed_pip_leaves_no_stamp(setup, failing):
    assert len(setup.installs()) == 2
    _edit(setup.root / "pyproject.toml")
    done, calls = setup.run(FAKE_FAIL=failing)
    assert done.returncode != 0 and "failed (log:" in done.stderr and "fake pip: no" in done.stderr
    assert len(calls) == (1 if failing == "torch==" else 2)  # the project is not installed after torch failed
    assert not setup.stamp.exists()
    # Back to the inputs of the old stamp: the failed install may have half-replaced that environment.
    (setup.root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert len(setup.installs()) == 2 and setup.stamp.exists()


def test_a_venv_python_that_does_not_run_is_never_up_to_date(setup):
    assert len(setup.installs()) == 2
    assert len(setup.installs(FAKE_BROKEN="1")) == 2


def test_test_sh_goes_through_the_stamp(setup):
    """scripts/test.sh (this checkout's, against the fake venv): pip once, then pytest directly."""
    done, calls = setup.run("--version", script=ROOT / "scripts" / "test.sh")
    assert done.returncode == 0, done.stderr
    assert [c.split()[:3] for c in calls] == [["-m", "pip", "install"]] * 2 + [["-m", "pytest", "--version"]]
    done, calls = setup.run("--version", script=ROOT / "scripts" / "test.sh")
    assert done.returncode == 0 and calls == ["-m pytest --version"], (calls, done.stderr)
    assert "[setup] venv is up to date" in done.stdout
