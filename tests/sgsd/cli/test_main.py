"""The `sgsd` entry points: the installed console script and `python -m sgsd`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgsd.cli import build_parser, main
from sgsd.datasets import bank_path


def _sgsd_executable() -> str:
    exe = Path(sys.executable).with_name("sgsd")
    if not exe.exists():
        pytest.fail(f"the `sgsd` console script is not installed next to {sys.executable}: pip install -e .")
    return str(exe)


def test_installed_console_script_inspects_a_shipped_bank():
    done = subprocess.run([_sgsd_executable(), "bank", "inspect", str(bank_path("qwen3_1.7b")), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["general_skills"] == {"static": 28, "dynamic": 0, "total": 28}
    assert report["common_mistakes"] == {"static": 98, "dynamic": 0, "total": 98}


def test_python_dash_m_sgsd_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "sgsd", "grade", "--answer", "3", "--response", "\\boxed{3}",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"correct": True, "extracted": "3"}


@pytest.mark.parametrize("argv, module", [
    (["bank", "inspect", "B"], "bank"),
    (["bank", "merge", "R", "--llm", "L", "-o", "O"], "bank"),
    (["bank", "build", "--model", "M", "--data", "D", "-o", "O"], "bank"),
    (["retrieve", "--bank", "B", "--problems", "P"], "tools"),
    (["grade", "--answer", "A", "--response", "R"], "tools"),
    (["eval"], "eval"),
    (["eval", "compare", "RUN"], "eval"),
    (["plot", "RUN", "-o", "O"], "plot"),
])
def test_each_command_is_registered_by_its_group_module(argv, module):
    assert build_parser().parse_args(argv).func.__module__ == f"sgsd.cli.{module}"
    assert "{bank,retrieve,grade,eval,plot}" in build_parser().format_usage()


def test_ctrl_c_in_any_command_exits_130_without_a_traceback(monkeypatch, capsys):
    from sgsd.cli import tools

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tools, "cmd_grade", interrupted)
    assert main(["grade", "--answer", "1", "--response", "x"]) == 130
    assert capsys.readouterr().err == "sgsd: interrupted\n"
