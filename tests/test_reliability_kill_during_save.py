"""SIGKILL at random moments while checkpoints are written, with TMPDIR on another filesystem (/dev/shm).

Every time, ``last.ckpt`` must load and hold one complete state (a tensor that matches its own counter), and
the next start must remove the partial files the killed writer left. The writer saves back to back through
``AtomicCheckpointIO`` (the IO every run of the CLI uses), so a random kill lands inside a save; the test
also checks that most kills really left a partial file behind (i.e. hit a save in progress).
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crrelu_lightning.checkpointing import TEMP_PREFIX, load_checkpoint_file, remove_stale_temp_files

N_KILLS = 20
STATE_NUMEL = 2_000_000  # 8 MB of float32: a save takes tens of milliseconds, long enough to be hit


def _check_complete(ckpt: dict) -> int:
    i = ckpt["global_step"]
    expected = torch.arange(STATE_NUMEL, dtype=torch.float32) + i
    assert torch.equal(ckpt["state_dict"]["w"], expected), f"last.ckpt of step {i} holds a mixed state"
    return i


# A small fork server run in a fresh interpreter: it imports torch once and forks one writer per kill in
# milliseconds (forking pytest itself could inherit locks held by other tests' threads). Each writer does what
# a training process does: at start remove what killed writers left, then save back to back.
DRIVER = r"""
import os, sys, torch
torch.set_num_threads(1)
from crrelu_lightning.checkpointing import AtomicCheckpointIO, remove_stale_temp_files
folder, numel = sys.argv[1], int(sys.argv[2])
pid = None
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "start":
        pid = os.fork()
        if pid == 0:
            removed = remove_stale_temp_files(folder)
            print("ready", os.getpid(), len(removed), flush=True)
            io, i = AtomicCheckpointIO(), int(arg)
            while True:
                i += 1
                w = torch.arange(numel, dtype=torch.float32) + i
                io.save_checkpoint({"global_step": i, "state_dict": {"w": w}}, os.path.join(folder, "last.ckpt"))
    elif cmd == "reap":
        _, status = os.waitpid(pid, 0)
        print("reaped", os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""


def _partials(folder: Path):
    return sorted(folder.glob(TEMP_PREFIX + "*"))


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or not hasattr(os, "fork"), reason="needs /dev/shm and fork")
def test_sigkill_during_saves_never_damages_last_ckpt(tmp_path, monkeypatch):
    shm_tmp = Path("/dev/shm") / f"crrelu-test-tmp-{os.getpid()}"
    shm_tmp.mkdir(exist_ok=True)
    assert os.stat(shm_tmp).st_dev != os.stat(tmp_path).st_dev, "TMPDIR must be on another filesystem"
    monkeypatch.setenv("TMPDIR", str(shm_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)  # make Python re-read TMPDIR
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(STATE_NUMEL)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))

    def ask(line: str):
        driver.stdin.write(line + "\n")
        driver.stdin.flush()

    rng = random.Random(12345)
    last_step, hits, leftovers_seen = 0, 0, 0
    try:
        for kill in range(N_KILLS + 1):
            ask(f"start {last_step}")
            word, pid, removed = driver.stdout.readline().split()
            assert word == "ready"
            pid = int(pid)
            leftovers_seen += int(removed)  # the start removed this many partial files of the killed writer
            # After the start's cleanup only the new writer's own partial file may exist.
            assert all(f".{pid}." in p.name for p in _partials(folder)), _partials(folder)
            if kill < N_KILLS:  # the last start only proves the cleanup
                while not (folder / "last.ckpt").exists():
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.02, 0.4))
            os.kill(pid, signal.SIGKILL)
            ask("reap 0")
            assert driver.stdout.readline().split() == ["reaped", str(int(signal.SIGKILL))]
            if kill == N_KILLS:
                break
            hits += any(f".{pid}." in p.name for p in _partials(folder))
            step = _check_complete(load_checkpoint_file(folder / "last.ckpt"))
            assert step >= last_step, "an older checkpoint replaced a newer one"
            last_step = step
        remove_stale_temp_files(folder)
        assert _partials(folder) == []
        staged = [p for p in shm_tmp.iterdir() if not p.name.startswith("pymp-")]  # pymp-*: multiprocessing's own
        assert staged == [], "no checkpoint bytes may be staged in TMPDIR"
    finally:
        driver.kill()
        driver.wait()
        shutil.rmtree(shm_tmp, ignore_errors=True)
    print(f"{N_KILLS} kills, {hits} during a save, {last_step} saves completed")
    assert last_step >= 2  # the writers made progress between kills
    # A loaded machine shifts the kill timing (8-16 of 20 landed in saves here); 5 still proves the test bites.
    assert hits >= N_KILLS // 4, f"only {hits}/{N_KILLS} kills landed during a save: the test lost its teeth"
    assert leftovers_seen >= hits - 1  # every partial file a killed save left was removed by the next start
