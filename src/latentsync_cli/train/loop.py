"""Resumable, deterministic training in chunks of steps.

A stage (the VAE, the UNet) trains in its own folder of the run:

    checkpoint.pt   model, optimizer, EMA weights, step, RNG states: written every
                    `checkpoint_every` steps and at the end of a chunk, atomically
    log.jsonl       one line per `log_every` steps: mean losses, learning rate, seconds
    usage.jsonl     one line per chunk: its steps, wall and CPU seconds, rewritten at every
                    checkpoint and at the end, so that a chunk killed outright (SIGKILL) still
                    counts up to its last checkpoint; the work a kill loses after it is not counted

A chunk runs a fixed number of steps (never a wall-clock time: the process
may be paused with SIGSTOP at any moment), then exits; the next chunk resumes
from the checkpoint. Every draw of randomness comes from the stage's one
torch.Generator, whose state is in the checkpoint, and the CPU thread count is
fixed, so a run resumed from step k computes exactly what an uninterrupted run
computes (tests/test_train_proxy.py checks this on a micro configuration).
SIGTERM ends a chunk cleanly after the step in progress.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
USAGE_FILE = "usage.jsonl"

# step_fn(model, generator) -> named loss values; it runs forward and backward, the loop does the rest.
StepFunction = Callable[[nn.Module, torch.Generator], dict[str, float]]


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up, constant, then a linear decay to `final_fraction` over the last `decay_fraction` of steps."""

    learning_rate: float
    total_steps: int
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    final_fraction: float = 0.1

    def learning_rate_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_start = self.total_steps * (1.0 - self.decay_fraction)
        if step < decay_start or self.decay_fraction == 0:
            return self.learning_rate * warmup
        progress = (step - decay_start) / max(1.0, self.total_steps - decay_start)
        return self.learning_rate * warmup * (1.0 - (1.0 - self.final_fraction) * min(1.0, progress))


def draw_start(counts: list[int], generator: torch.Generator) -> tuple[int, int]:
    """One draw, uniform over the window starts of several clips (counts[i] starts in clip i):
    (clip index, start)."""
    pick = int(torch.randint(0, sum(counts), (1,), generator=generator))
    clip = 0
    while pick >= counts[clip]:
        pick -= counts[clip]
        clip += 1
    return clip, pick


class Recipe:
    """What every stage's recipe (a frozen dataclass with steps, learning_rate, warmup_steps and
    decay_fraction) shares: its learning-rate schedule, and its fields as a dict for recipe.json."""

    def schedule(self) -> Schedule:
        return Schedule(self.learning_rate, self.steps, self.warmup_steps, self.decay_fraction)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChunkSettings:
    steps: int  # steps this chunk runs at most
    checkpoint_every: int = 50
    log_every: int = 10
    grad_clip: float = 1.0
    ema_decay: float | None = None  # keep an exponential moving average of the weights (the UNet's)
    pid_file: Path | None = None  # the running chunk's process id is written here


class Stage:
    """One model's training state, saved to and restored from `folder`."""

    def __init__(self, folder: Path, model: nn.Module, schedule: Schedule, seed: int, ema_decay: float | None = None):
        self.folder = folder
        self.model = model
        self.schedule = schedule
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.learning_rate, weight_decay=0.01)
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema_decay else None
        self.ema_decay = ema_decay
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= self.schedule.total_steps

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "step": self.step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{CHECKPOINT_FILE}.tmp-{os.getpid()}"
        torch.save(state, temporary)
        os.replace(temporary, self.folder / CHECKPOINT_FILE)

    def restore(self) -> bool:
        """Load the checkpoint if there is one; True when it was loaded."""
        path = self.folder / CHECKPOINT_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = state["ema"]
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return True

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """The EMA weights when there are any, else the model's."""
        return self.ema if self.ema is not None else self.model.state_dict()

    def update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                if value.dtype.is_floating_point:
                    self.ema[key].mul_(decay).add_(value, alpha=1 - decay)
                else:
                    self.ema[key].copy_(value)


def train_chunk(stage: Stage, step_fn: StepFunction, settings: ChunkSettings, log=print) -> int:
    """Run up to `settings.steps` steps from the stage's checkpoint; returns the steps run."""
    stage.folder.mkdir(parents=True, exist_ok=True)
    stage.restore()
    trim_log(stage.folder / LOG_FILE, stage.step)  # lines written after the checkpoint were lost work
    if settings.pid_file is not None:
        settings.pid_file.write_text(f"{os.getpid()}\n")
    stop = _stop_on_sigterm()
    first_step, wall, cpu = stage.step, time.perf_counter(), time.process_time()
    chunk = f"{os.getpid()}-{time.time_ns()}"  # this chunk's line in usage.jsonl

    def record_usage() -> None:
        usage = {"chunk": chunk, "from_step": first_step, "to_step": stage.step,
                 "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                 "threads": torch.get_num_threads()}
        replace_usage_line(stage.folder / USAGE_FILE, usage)

    window: list[dict[str, float]] = []
    window_start = (time.perf_counter(), time.process_time())
    stage.model.train()
    try:
        while not stage.done and stage.step - first_step < settings.steps and not stop["requested"]:
            window.append(one_step(stage, step_fn, settings.grad_clip))
            if stage.step % settings.log_every == 0:
                write_log(stage, window, window_start, log)
                window, window_start = [], (time.perf_counter(), time.process_time())
            if stage.step % settings.checkpoint_every == 0:
                stage.save()
                record_usage()
        stage.save()
    finally:
        signal.signal(signal.SIGTERM, stop["previous"])
        if settings.pid_file is not None:
            settings.pid_file.unlink(missing_ok=True)
        record_usage()
    return stage.step - first_step


def replace_usage_line(path: Path, usage: dict) -> None:
    """Write `usage` as its chunk's line of usage.jsonl, in place of the line it wrote before (atomically)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line).get("chunk") != usage["chunk"]]
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text("".join(line + "\n" for line in [*kept, json.dumps(usage)]))
    os.replace(temporary, path)


def one_step(stage: Stage, step_fn: StepFunction, grad_clip: float) -> dict[str, float]:
    for group in stage.optimizer.param_groups:
        group["lr"] = stage.schedule.learning_rate_at(stage.step)
    stage.optimizer.zero_grad(set_to_none=True)
    losses = step_fn(stage.model, stage.generator)
    losses["grad_norm"] = float(nn.utils.clip_grad_norm_(stage.model.parameters(), grad_clip))
    stage.optimizer.step()
    stage.step += 1
    stage.update_ema()
    return losses


def write_log(stage: Stage, window: list[dict[str, float]], start: tuple[float, float], log) -> None:
    line = {"step": stage.step}
    for key in window[0]:
        values = [entry[key] for entry in window if math.isfinite(entry[key])]
        line[key] = round(sum(values) / len(values), 6) if values else None
    line["lr"] = stage.schedule.learning_rate_at(stage.step - 1)
    line["wall_s_per_step"] = round((time.perf_counter() - start[0]) / len(window), 3)
    line["cpu_s_per_step"] = round((time.process_time() - start[1]) / len(window), 3)
    with open(stage.folder / LOG_FILE, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    log(" ".join(f"{key}={value}" for key, value in line.items()))


def trim_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after `step` (written before a kill, after the last checkpoint)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def _stop_on_sigterm() -> dict:
    """SIGTERM sets a flag that ends the chunk after the step in progress (the checkpoint is written)."""
    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    stop["previous"] = signal.signal(signal.SIGTERM, request_stop)
    return stop
