"""gateway/ids.py: ids unique within a process, across processes and across forks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from gateway.ids import new_id


def test_ids_look_like_uuid4_hex_and_never_repeat():
    ids = [new_id() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_a_forked_worker_draws_its_own_prefix():
    first = new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a --workers process does after the fork
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert child[:16] != first[:16]  # not the parent's prefix, so not the parent's next ids
    assert new_id()[:16] == first[:16]


def test_separate_processes_do_not_share_a_prefix():
    code = "from gateway.ids import new_id; print(new_id())"
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout[:16]
           for _ in range(3)}
    assert len(out) == 3
