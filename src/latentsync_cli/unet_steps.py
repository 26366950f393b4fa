"""UNetSteps: what the UNet did in a run, counted by the denoising loop. A leaf module.

Steps are counted per UNet call (a call denoises one window, or several windows
batched together), summed over the calls of a run:

    full            the whole UNet ran
    cached          DeepCache: only the shallow layers ran, on the deep features of a full step
    skipped         step skipping: no UNet at all, the previous step's noise prediction was reused
    uncond_reused   CFG cache: a full or cached step that ran only the conditional half of the batch
                    and reused the unconditional pass's difference from an earlier step
    half_res        multi-scale: a full or cached step run at half the latent resolution

Frame passes say how much each kind of step cost: one frame of one batch row
(the conditional or the unconditional half) through the UNet, so that windows
of different lengths, batches of several windows, CUDA-graph padding and the
unconditional half are all weighed as they ran. bench/flops.py turns them into
FLOPs with COST_MODEL.md's per-call numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

FRAME_PASS_KINDS = ("full", "cached", "full_half_res", "cached_half_res")


@dataclass
class UNetSteps:
    full: int = 0
    cached: int = 0
    skipped: int = 0
    uncond_reused: int = 0
    half_res: int = 0
    # kind (FRAME_PASS_KINDS) -> frames through the UNet; padding frames included
    frame_passes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FRAME_PASS_KINDS, 0))
    approximate: bool = False  # True in old benchmark files that estimated the counts

    @property
    def total(self) -> int:
        """Every denoising step of every UNet call, whatever it ran."""
        return self.full + self.cached + self.skipped

    def add(self, other: UNetSteps) -> None:
        for name in ("full", "cached", "skipped", "uncond_reused", "half_res"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, count in other.frame_passes.items():
            self.frame_passes[kind] = self.frame_passes.get(kind, 0) + count

    def count_pass(self, cached: bool, half_res: bool, frames: int) -> None:
        """One UNet pass of `frames` frame rows (batch x frames)."""
        if cached:
            self.cached += 1
        else:
            self.full += 1
        self.half_res += int(half_res)
        kind = ("cached" if cached else "full") + ("_half_res" if half_res else "")
        self.frame_passes[kind] = self.frame_passes.get(kind, 0) + frames

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["frame_passes"] = dict(self.frame_passes)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> UNetSteps:
        """Read a saved count; what an older file lacks is 0."""
        passes = dict.fromkeys(FRAME_PASS_KINDS, 0)
        passes.update({kind: int(count) for kind, count in (values.get("frame_passes") or {}).items()})
        return cls(
            full=int(values.get("full", 0)),
            cached=int(values.get("cached", 0)),
            skipped=int(values.get("skipped", 0)),
            uncond_reused=int(values.get("uncond_reused", 0)),
            half_res=int(values.get("half_res", 0)),
            frame_passes=passes,
            approximate=bool(values.get("approximate", False)),
        )
