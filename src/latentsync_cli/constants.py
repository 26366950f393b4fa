"""Constants that several modules share. A leaf module: it imports nothing of the package.

Keeping them here (and not in settings.py or presets.py) is what lets presets,
settings and hardware import each other's types without an import circle.
"""

SCHEDULERS = ("ddim", "dpmpp_2m", "euler", "unipc")
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_CHOICES = ("auto",) + PRECISIONS

# The motion modules' temporal position encoding has 24 slots, so a window holds at most 24 frames.
MAX_WINDOW = 24

# Every scheduler is built from upstream's config with 1000 training timesteps (the bound on
# denoising steps that follows from it is limits.MAX_STEPS).
TRAIN_TIMESTEPS = 1000

# LatentSync works at 25 frames per second: input video is conformed to it, audio features are cut to it.
FPS = 25

# Where the weights come from: the real checkpoint (found or downloaded), seeded random weights
# of the full-size or the tiny architecture (timing and tests only), or the small proxy model trained
# on three clips that ships inside the package (models/proxy.py).
WEIGHT_CHOICES = ("auto", "checkpoint", "random", "random-tiny", "proxy")
