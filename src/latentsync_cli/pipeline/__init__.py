"""The lip-sync pipeline: windows in, frames out (face -> VAE -> denoise -> VAE -> restore -> a frame sink).

lipsync.py   LipsyncPipeline(models, settings, timer).run(SyncJob) -> SyncResult
faces.py     FaceGenerator: a batch of windows -> VAE encode -> denoise -> VAE decode -> faces
denoise.py   the denoising loop of one UNet call's windows (what the golden tests check)
windows.py   windows, the WindowPlan the job layer hands over, per-window randomness, the FrameSink
overlap.py   the producer / GPU / consumer threads and their bounded queues
"""

from latentsync_cli.pipeline.lipsync import LipsyncPipeline, SyncJob, SyncResult

__all__ = ["LipsyncPipeline", "SyncJob", "SyncResult"]
