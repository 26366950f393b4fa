"""What weights a job or a benchmark ran with, in words every output and report carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WeightsInfo:
    choice: str  # what --weights asked for ("auto", "random-tiny", ...)
    id: str  # what was loaded: ModelBundle.weights_id, e.g. "latentsync-1.6", "random-tiny"
    description: str
    is_random: bool
    is_proxy: bool = False  # the small model trained on three clips: it draws mouths, far below 1.6's quality

    @property
    def note(self) -> str | None:
        """What an output made with these weights must say: they are not LatentSync 1.6's."""
        return self.description if self.is_random or self.is_proxy else None

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "id": self.id, "description": self.description, "is_random": self.is_random,
                "is_proxy": self.is_proxy}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsInfo:
        # Benchmark entries cached before the choice was recorded name only the weights loaded.
        loaded = str(data.get("id", ""))
        return cls(str(data.get("choice", loaded)), loaded, str(data.get("description", "")),
                   bool(data.get("is_random", True)), bool(data.get("is_proxy", False)))  # fmt: skip
