"""The lip-sync pipeline: windows of frames through face -> VAE -> denoise -> VAE -> restore -> encode.

lipsync.py   LipsyncPipeline(models, settings, timer).run(SyncJob) -> SyncResult
faces.py     FaceGenerator: a batch of windows -> VAE encode -> denoise -> VAE decode -> faces
denoise.py   the denoising loop of one UNet call's windows (what the golden tests check)
windows.py   windows, per-window randomness, the WindowStore resume hook
overlap.py   the producer / GPU / consumer threads and their bounded queues
"""

from latentsync_cli.pipeline.lipsync import LipsyncPipeline, SyncJob, SyncResult
from latentsync_cli.pipeline.windows import NoStore, WindowStore

__all__ = ["LipsyncPipeline", "NoStore", "SyncJob", "SyncResult", "WindowStore"]
