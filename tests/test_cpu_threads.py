"""The threads torch's CPU kernels get: one core left to the pipeline's own lanes, unless the user says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from latentsync_cli.cpu_threads import job_cpu_threads

THREADS_OF_THE_COMMAND = (
    "import latentsync_cli.cli, torch; print(torch.get_num_threads())"  # what `latentsync` runs torch with
)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_a_job_leaves_one_core_to_its_lanes(monkeypatch, cores, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert job_cpu_threads() == threads


def command_threads(environment: dict[str, str]) -> int:
    done = subprocess.run([sys.executable, "-c", THREADS_OF_THE_COMMAND], env=environment, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_the_command_uses_them_unless_omp_num_threads_is_set():
    environment = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    # torch caps a count past the cores it sees, so compare with the count given explicitly
    assert command_threads(environment) == command_threads({**environment, "OMP_NUM_THREADS": str(job_cpu_threads())})
    assert command_threads({**environment, "OMP_NUM_THREADS": "1"}) == 1  # a farm packing jobs on a host
