"""Optimizations of one run and the record of each, the optimization table users see.

run_plan.build_run_plan decides once what a run computes with and returns a
RunPlan. Two kinds of things go into it:

  optimizers      a small class whose `apply(target, settings, device)` changes the
                  computation (the VAE's layout, slicing or tiling; the UNet call,
                  compiled or graph-replayed) and returns its LogEntry
  plan fields     values the pipeline reads (steps, scheduler, guidance, DeepCache,
                  the memory ladder's first rung), each with a function that makes
                  its LogEntry

Process-wide torch switches (TF32, the GPU memory cap) are neither: the
`torch_switches` context manager sets them around a run and restores them.

Every entry says what happened: "applied" with a detail the user can check,
"off" when the settings did not ask for it, or "skipped" with the reason it
could not apply (e.g. CUDA graphs on a CPU). Nothing is claimed that did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

APPLIED = "applied"
OFF = "off"  # not requested by the settings
SKIPPED = "skipped"  # requested, but it does not apply here (the detail says why)
DOWNGRADED = "downgraded"  # a memory setting lowered after an out-of-memory error


@dataclass(frozen=True)
class LogEntry:
    name: str
    status: str  # APPLIED, OFF, SKIPPED or DOWNGRADED
    detail: str

    def describe(self) -> str:
        if self.status == APPLIED:
            return f"{self.name}: {self.detail}"
        return f"{self.name}: {self.status}: {self.detail}"

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class OptimizationLog:
    entries: list[LogEntry] = field(default_factory=list)

    def add(self, entry: LogEntry) -> None:
        self.entries.append(entry)

    def applied(self, name: str, detail: str) -> None:
        self.entries.append(LogEntry(name, APPLIED, detail))

    def off(self, name: str, detail: str) -> None:
        self.entries.append(LogEntry(name, OFF, detail))

    def skipped(self, name: str, reason: str) -> None:
        self.entries.append(LogEntry(name, SKIPPED, reason))

    def downgraded(self, name: str, detail: str) -> None:
        self.entries.append(LogEntry(name, DOWNGRADED, detail))

    def find(self, name: str) -> list[LogEntry]:
        return [entry for entry in self.entries if entry.name == name]

    def is_applied(self, name: str) -> bool:
        return any(entry.status == APPLIED for entry in self.find(name))

    def lines(self) -> list[str]:
        return [entry.describe() for entry in self.entries]

    def to_list(self) -> list[dict]:
        return [entry.to_dict() for entry in self.entries]
