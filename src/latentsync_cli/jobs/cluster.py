"""Jobs on a Ray cluster: one long-lived worker per GPU that loads the models once and takes shards from a queue.

    records = run_on_ray(manifest, base_job, ClusterOptions(address="auto"))

The driver (this process) checks every row as `sync --batch` does, splits each
job into shards (`Shard`, one work dir per job) and hands them to idle workers;
when the last shard of a job is done, one worker finalizes it (restore, encode,
mux). A worker that dies (a kill -9, a lost machine) costs only the shard it
was computing: a new worker takes it again and resumes from the windows
already in the work dir. A driver that is killed and restarted skips finished
outputs and resumes the others from their work dirs, which are named after
their outputs. Outputs are the ones a single run gives, byte for byte.

Ray is an optional extra (`pip install 'latentsync[ray]'`): it is imported here
only, and only when asked for.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from latentsync_cli.cpu_threads import job_cpu_threads
from latentsync_cli.errors import InputError, LatentsyncError, NotAvailableError, UsageError
from latentsync_cli.jobs.batch import BatchRecord, check_rows, read_manifest, row_job
from latentsync_cli.jobs.job import Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.outputs import claimed_path, default_output_path, output_exists
from latentsync_cli.jobs.run import prepare, run
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.media.audio import SAMPLE_RATE
from latentsync_cli.progress import TASK_GENERATE, TASK_JOB, NoProgress, Progress

SECONDS_PER_SHARD = 8.0  # a long video is split so that each worker gets at least this much of it
WORK_DIR_PREFIX = ".latentsync-work-"
RAY_EXTRA_HINT = "pip install 'latentsync[ray]'"
RAY_CONNECT_TIMEOUT_S = 20.0  # joining a cluster that does not answer fails after this long


def import_ray():
    try:
        import ray
    except ImportError:
        raise NotAvailableError(f"--ray needs Ray, an optional extra this install lacks: {RAY_EXTRA_HINT}") from None
    return ray


@dataclass(frozen=True)
class ClusterOptions:
    address: str = "auto"  # "auto": the running cluster (`ray start --head`); "local": a private one here
    workers: int | None = None  # None: one per GPU of the cluster, or one on a CPU-only cluster
    shards: int | None = None  # shards per job; None: as many as idle workers can take, by length
    work_root: Path | None = None  # where the jobs' work dirs go; None: beside each output


class ShardWorker:
    """Runs shards and finalizes on one device, keeping the models of the last job (made a Ray actor)."""

    def __init__(self, on_cpu: bool = False):
        self.cache = ModelCache()
        if on_cpu:
            # Ray gives a one-CPU actor OMP_NUM_THREADS=1, and a CPU kernel's numbers can depend on its
            # thread count (the VAE encoder's do for some batch sizes): use the threads a `latentsync sync`
            # process would, so that a shard computes what the single run does.
            import torch

            torch.set_num_threads(job_cpu_threads())

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> dict:
        """One shard (`job.shard`) or the finalize step (`job.finalize`) of a job; a summary to the driver."""
        finished = run(job, self.cache)
        return {"frames": finished.result.frames, "resumed_windows": finished.result.resumed_windows}


@dataclass
class PlannedJob:
    record: BatchRecord
    job: Job  # with its work dir
    shards_left: set[int]
    started: float
    owns_work_dir: bool  # chosen by the driver (named after the output): removed when the job is done
    frames: int = 0  # output frames, from the speech length (for the driver's progress)
    shard_count: int = 1


@dataclass(frozen=True)
class Task:
    row: int
    job: Job  # with shard or finalize set


def run_manifest_on_ray(
    manifest: Path,
    base: Job,
    options: ClusterOptions,
    on_record: Callable[[BatchRecord], None] | None = None,
    progress: Progress | None = None,
) -> list[BatchRecord]:
    """Every row of `manifest` on the cluster (checked first, as `sync --batch` does); records in row order."""
    ray = import_ray()  # before anything else: without the extra, say so at once
    rows = read_manifest(manifest)
    folder = Path(manifest).parent.absolute()
    check_rows(manifest, rows, base, folder)
    return run_on_ray([(row.number, row_job(base, row, folder)) for row in rows], options, on_record, ray, progress)


def run_on_ray(
    jobs: list[tuple[int, Job]],
    options: ClusterOptions,
    on_record: Callable[[BatchRecord], None] | None = None,
    ray=None,
    progress: Progress | None = None,
) -> list[BatchRecord]:
    """Each (number, job) on the cluster, split into shards; one BatchRecord per job, in the order given.

    `progress` follows the whole run: output frames of every job (a shard's share when it is done).
    """
    ray = ray or import_ray()
    _connect(ray, options.address)
    pool = WorkerPool(ray, options.workers)
    driver = Driver(on_record, progress or NoProgress())
    for number, job in jobs:
        driver.add(plan_job(number, job, options, pool.size))
    driver.start_progress()
    pool.run(driver.tasks, driver.done)
    return [driver.planned[number].record for number, _job in jobs]


class Driver:
    """The driver's books: the planned jobs, the queue of their tasks, and what to do when one comes back."""

    def __init__(self, on_record: Callable[[BatchRecord], None] | None, progress: Progress):
        self.planned: dict[int, PlannedJob] = {}
        self.tasks: deque[Task] = deque()
        self.on_record = on_record or (lambda record: None)
        self.progress = progress

    def add(self, plan: PlannedJob) -> None:
        number = plan.record.job
        self.planned[number] = plan
        if plan.record.status == "ok":
            self.tasks.extend(Task(number, replace(plan.job, shard=Shard(k, n))) for k, n in _shards(plan))
        else:
            self.on_record(plan.record)

    def start_progress(self) -> None:
        running = [plan for plan in self.planned.values() if plan.record.status == "ok"]
        self.progress.start(TASK_JOB, sum(plan.frames for plan in running))
        self.progress.start(TASK_GENERATE, len(self.tasks))

    def done(self, task: Task, outcome) -> None:
        """A shard or finalize came back (a summary dict, or the LatentsyncError it raised)."""
        plan = self.planned[task.row]
        if plan.record.status != "ok":
            return  # the job already failed: its other shards' results do not matter
        if isinstance(outcome, LatentsyncError):
            plan.record.status, plan.record.error = "failed", outcome.message
            plan.record.exit_code = int(outcome.exit_code)
        elif task.job.finalize:
            plan.record.frames = outcome["frames"]
            if plan.owns_work_dir:
                shutil.rmtree(plan.job.work_dir, ignore_errors=True)
            self.progress.message(f"job {task.row} written: {plan.record.output}")
        else:
            self.shard_done(task, plan, outcome)
            return
        plan.record.seconds = round(time.monotonic() - plan.started, 3)
        self.on_record(plan.record)

    def shard_done(self, task: Task, plan: PlannedJob, outcome: dict) -> None:
        plan.shards_left.discard(task.job.shard.number)
        plan.record.resumed_windows += outcome["resumed_windows"]  # windows found already finished
        self.progress.advance(TASK_GENERATE)
        self.progress.advance(TASK_JOB, plan.frames // plan.shard_count)
        if not plan.shards_left:
            self.tasks.append(Task(task.row, replace(plan.job, finalize=True)))


def plan_job(row: int, job: Job, options: ClusterOptions, workers: int) -> PlannedJob:
    """Check the job on the driver (so that a bad row fails before any worker is busy) and choose its shards."""
    record = BatchRecord(row, "ok", str(job.video), None)
    output = job.output if job.output is not None else default_output_path(job.video)
    record.output = str(output)
    work_dir = job.work_dir or _work_dir_for(output, options.work_root)
    planned = PlannedJob(record, replace(job, output=output, work_dir=work_dir), set(), time.monotonic(), False)
    if output_exists(output) and not job.overwrite:
        record.status = "skipped"
        return planned
    try:
        if job.audio is not None and job.audio.exists() and not job.audio.is_file():
            raise InputError(
                f"{job.audio}: a named pipe cannot be read by every worker of a Ray job; save the speech to a file"
            )
        prepared = prepare(planned.job)
    except LatentsyncError as error:
        record.status, record.error, record.exit_code = "failed", error.message, int(error.exit_code)
        return planned
    seconds = prepared.speech.size / SAMPLE_RATE
    count = options.shards or shard_count_for(seconds, workers)
    planned.shards_left = set(range(1, count + 1))
    planned.shard_count = count
    planned.frames = prepared.num_frames
    planned.owns_work_dir = job.work_dir is None  # (a restarted driver finds it again, and removes it when done)
    return planned


def _shards(plan: PlannedJob) -> list[tuple[int, int]]:
    count = len(plan.shards_left)
    return [(number, count) for number in sorted(plan.shards_left)]


def _work_dir_for(output: Path, work_root: Path | None) -> Path:
    """A work dir named after the output, so that a restarted driver finds it again."""
    digest = hashlib.sha256(str(output.absolute()).encode()).hexdigest()[:12]
    claimed = claimed_path(output.absolute())  # a sequence's folder: its work dir goes beside it, not in it
    root = work_root if work_root is not None else claimed.parent
    return root / f"{WORK_DIR_PREFIX}{claimed.stem}-{digest}"


def _connect(ray, address: str) -> None:
    """Join the cluster at `address` ("auto", "local" or HOST:PORT); UsageError (exit 2) within
    RAY_CONNECT_TIMEOUT_S where no cluster answers (Ray itself would keep retrying for minutes)."""
    if ray.is_initialized():
        return
    if address == "local":
        _ray_init(ray, address, log_to_driver=False, include_dashboard=False)
        return
    deadline = time.monotonic() + RAY_CONNECT_TIMEOUT_S
    if address != "auto":
        _check_reachable(address, deadline)
    # ray.init runs in a thread so that it can be given up on; there it also leaves the job's own
    # SIGTERM handler (exit 143 after clean-up) in place, and says so in a warning that is dropped here.
    finished: list[BaseException | None] = []
    connecting = threading.Thread(
        target=lambda: finished.append(_try(lambda: _ray_init(ray, address, log_to_driver=False))),
        name="ray connect",
        daemon=True,  # if Ray never answers, the thread must not keep the process alive
    )
    ray_logger = logging.getLogger("ray._private.worker")
    ray_logger.addFilter(_not_main_thread_warning)
    try:
        connecting.start()
        connecting.join(max(0.0, deadline - time.monotonic()))
    finally:
        ray_logger.removeFilter(_not_main_thread_warning)
    if not finished:
        raise UsageError(
            f"--ray {address}: no Ray cluster answered within {RAY_CONNECT_TIMEOUT_S:g} s; "
            "check the address, or start one with `ray start --head`"
        )
    if finished[0] is not None:
        raise finished[0]


def _not_main_thread_warning(record: logging.LogRecord) -> bool:
    return "not the main thread" not in record.getMessage()


def _ray_init(ray, address: str, **options) -> None:
    try:
        ray.init(**({} if address == "local" else {"address": address}), **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        detail = " ".join(str(error).split())[:200]
        raise UsageError(
            f"--ray {address}: cannot reach a Ray cluster ({detail}); start one with `ray start --head`"
        ) from None


def _try(call: Callable[[], None]) -> BaseException | None:
    try:
        call()
    except BaseException as error:  # handed to the waiting thread, which raises it
        return error
    return None


def _check_reachable(address: str, deadline: float) -> None:
    """UsageError at once when nothing listens at HOST:PORT (`ray://HOST:PORT` too)."""
    host, _colon, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 address: [::1]:6379
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: expected auto, local or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(
            f"--ray {address}: no Ray cluster answers there ({reason}); check the address, "
            "or start one with `ray start --head`"
        ) from None


class WorkerPool:
    """Ray actors, one per GPU (or `count` on a CPU cluster), fed from a queue; a dead one is replaced."""

    def __init__(self, ray, count: int | None):
        self.ray = ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.size = count or max(gpus, 1)
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, **resources)(ShardWorker)
        self.on_cpu = not gpus
        self.idle = [self.actor_class.remote(self.on_cpu) for _ in range(self.size)]

    def run(self, tasks: deque, on_done: Callable[[Task, object], None]) -> None:
        """Until the queue and every worker are empty; `on_done` may queue more tasks."""
        busy: dict = {}  # object ref -> (task, actor)
        while tasks or busy:
            while tasks and self.idle:
                task, actor = tasks.popleft(), self.idle.pop()
                busy[actor.run.remote(task.job)] = (task, actor)
            ready, _ = self.ray.wait(list(busy), num_returns=1)
            task, actor = busy.pop(ready[0])
            try:
                outcome = self.ray.get(ready[0])
            except self.ray.exceptions.RayActorError:  # the worker died: a new one takes the shard again
                tasks.appendleft(task)
                self.idle.append(self.actor_class.remote(self.on_cpu))
                continue
            except self.ray.exceptions.RayTaskError as error:
                outcome = _job_error(error)
            self.idle.append(actor)
            on_done(task, outcome)


def _job_error(error) -> LatentsyncError:
    """The LatentsyncError a worker raised (Ray wraps it), or an internal error naming the exception."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, LatentsyncError):
        return cause
    failure = LatentsyncError(f"internal error on a worker: {type(cause).__name__}: {cause}")
    return failure


def shard_count_for(seconds: float, workers: int) -> int:
    """How many shards a job of `seconds` of speech gets when `workers` workers can take them."""
    return max(1, min(workers, math.ceil(seconds / SECONDS_PER_SHARD)))
