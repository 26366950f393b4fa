"""The one model cache: each job gets its models loaded once and handed over in a known state.

Several jobs in one process share models: the rows of a batch, a Ray worker's
shards, the cases of a benchmark. A run changes its models while it works (the
VAE's memory format and slicing, the out-of-memory ladder's offload to the
CPU), so before each job the cache puts them back: on the job's device,
contiguous (NCHW) weights, diffusers' slicing and tiling off, eval mode, no
gradients. What a run wraps around a model (torch.compile, CUDA graphs) lives
in that run's plan, never on the model, so nothing of it carries over.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from latentsync_cli.jobs.job import PreparedJob

if TYPE_CHECKING:
    from latentsync_cli.weights.load import ModelBundle


class ModelCache:
    """The models of the last job, reused by the next one when weights, folder, device and precision match."""

    def __init__(self):
        self.key: tuple | None = None
        self.models: ModelBundle | None = None

    def get(self, prepared: PreparedJob) -> ModelBundle:
        job, settings = prepared.job, prepared.resolved.settings
        return self.load(job.weights, absolute(job.checkpoint_dir), settings.device, settings.precision)

    def load(self, weights: str, checkpoint_dir: Path | None, device: str, precision: str) -> ModelBundle:
        from latentsync_cli.optimizers.precision import dtype_for
        from latentsync_cli.weights.load import load_models

        key = (weights, checkpoint_dir, device, precision)
        if key != self.key:
            self.models = None  # free the previous job's models before loading others
            self.models = load_models(weights, checkpoint_dir, device, dtype_for(precision), seed=0)
            self.key = key
        reset_models(self.models, device)
        return self.models

    def release(self) -> None:
        """Drop the models (and, on a GPU, give their memory back)."""
        self.models, self.key = None, None
        import torch

        from latentsync_cli.optimizers.memory import free_device_memory

        if torch.cuda.is_available():
            free_device_memory(torch.device("cuda"))


def reset_models(models: ModelBundle, device: str) -> None:
    """Put the models in the state a fresh load leaves them in (see the module's docstring)."""
    import torch

    from latentsync_cli.optimizers.vae_memory import set_vae_memory

    for model in (models.unet, models.vae, models.audio_encoder):
        model.to(device)
        model.eval().requires_grad_(False)
    models.vae.to(memory_format=torch.contiguous_format)
    set_vae_memory(models.vae, slicing=False, tiling=False)


def absolute(folder: Path | None) -> Path | None:
    return Path(folder).expanduser().absolute() if folder is not None else None
