"""bench.heldout: the generation behind the proxy's held-out table (scripts/train_proxy.py evaluate)."""

from __future__ import annotations

import numpy as np
import torch

from latentsync_cli.bench.heldout import generate_faces
from latentsync_cli.settings.hardware import DeviceRecord
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import resolve_settings


def test_references_that_are_the_faces_themselves_give_syncs_faces(tiny_models):
    """The reference seam takes the same draws as `sync`'s own encode: handed the faces as references, it must
    make exactly the faces `sync` makes (and other references must change them)."""
    request = SettingsRequest(mode="turbo", device="cpu", seed=3)
    settings = resolve_settings(load_presets(), request, DeviceRecord(backend="cpu", name="CPU")).settings
    size, count = tiny_models.resolution, 8  # one window, shorter than the mode's
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    audio = torch.from_numpy(rng.standard_normal((count, 50, 384)).astype(np.float32))

    as_sync = generate_faces(tiny_models, settings, faces, audio)
    self_referenced = generate_faces(tiny_models, settings, faces, audio, references=faces)
    other_referenced = generate_faces(tiny_models, settings, faces, audio, references=faces[::-1].copy())

    assert np.array_equal(self_referenced, as_sync)
    assert not np.array_equal(other_referenced, as_sync)
