"""The start-up profile's clock: a process's start placed on the wall clock (``startup.process_start``).

Independent expectation: the wall-clock time this test read just before and just after starting a fresh
interpreter, which reports its own ``process_start``. The start must lie between the two (to the 10 ms of
/proc's clock ticks); /proc/stat's whole-second ``btime`` put it up to a second early.
"""

from __future__ import annotations

import subprocess
import sys
import time

TICK = 0.02  # /proc counts a process's start in clock ticks (10 ms at 100 Hz), and rounds down


def test_a_process_start_lies_between_the_clock_before_and_after_it_was_started():
    for _ in range(3):
        before = time.time()
        proc = subprocess.Popen([sys.executable, "-c", "from hpcft.train.startup import process_start; "
                                 "print(repr(process_start()))"], stdout=subprocess.PIPE, text=True)  # fmt: skip
        after = time.time()  # Popen returns once the child exists (it has exec'd)
        start = float(proc.communicate(timeout=60)[0])
        assert before - TICK <= start <= after + TICK, (before, start, after)


def test_profile_stages_are_seconds_since_that_start():
    from hpcft.train import startup

    startup._marks.clear()
    startup.mark("imports")
    profile = startup.profile(warm=False)
    now = time.time()
    # this process started before pytest imported anything; the mark was just now
    assert 0 < profile["imports"] <= now - profile["process_start"] + TICK
    assert abs(profile["process_start"] + profile["imports"] - now) < 0.5
