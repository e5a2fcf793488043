"""The run directory's lock: exclusive, released, and gone with a killed holder."""

import signal
import subprocess
import sys

from softmaso import runs


def test_claim_is_exclusive_and_released(tmp_path):
    with runs.claim(tmp_path) as first:
        assert first
        with runs.claim(tmp_path) as second:
            assert not second
    with runs.claim(tmp_path) as again:
        assert again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from softmaso.runs import claim\n"
        f"with claim(Path({str(tmp_path)!r})) as ok:\n    print(ok, flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with runs.claim(tmp_path) as mine:
        assert not mine
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with runs.claim(tmp_path) as mine:
        assert mine
