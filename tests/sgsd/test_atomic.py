"""Atomic writes (sgsd/atomic.py): the umask's (or the replaced file's) mode, not mkstemp's
0600; the temporary file of a writer killed mid-save is removed by the next save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sgsd.atomic import atomic_path, atomic_write_json


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "bank.json", {"a": 1})
        assert _mode(tmp_path / "bank.json") == 0o644  # was 0600: unreadable on a shared cluster
        os.chmod(tmp_path / "bank.json", 0o640)
        atomic_write_json(tmp_path / "bank.json", {"a": 2})
        assert _mode(tmp_path / "bank.json") == 0o640
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {"a": 1})
        assert _mode(tmp_path / "private.json") == 0o600
    finally:
        os.umask(old)


def test_the_temp_file_of_a_writer_killed_mid_save_is_removed_by_the_next_save(tmp_path):
    code = ("import sys, time\nfrom sgsd.atomic import atomic_path\n"
            f"with atomic_path({str(tmp_path / 'bank.json')!r}) as tmp:\n"
            "    tmp.write_bytes(b'x' * 1000)\n    print('writing', flush=True)\n    time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    live = list(tmp_path.glob(".bank.json.*.tmp"))
    assert len(live) == 1
    atomic_write_json(tmp_path / "bank.json", {"a": 0})  # a live writer's file is left alone
    assert live[0].exists()
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    atomic_write_json(tmp_path / "bank.json", {"a": 1})
    assert not list(tmp_path.glob(".bank.json.*.tmp")) and (tmp_path / "bank.json").exists()


def test_an_old_temp_file_is_stale_whoever_wrote_it(tmp_path):
    stale = tmp_path / f".bank.json.{os.getppid()}.abcd.tmp"  # a live pid, but hours old
    stale.write_text("partial")
    hours_ago = time.time() - 3 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    with atomic_path(tmp_path / "bank.json") as tmp:
        tmp.write_text("{}")
    assert not stale.exists()
