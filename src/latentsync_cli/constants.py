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

# LatentSync works at 25 frames per second: its audio rows and motion modules were trained at that rate.
# A constant-rate plate keeps its own rate (--fps source): each frame takes the audio rows at its own time.
FPS = 25
FPS_CHOICES = ("source", "25")  # --fps: the source's own constant rate, or 25 (variable rates always become 25)
LENGTH_CHOICES = ("speech", "video")  # --length: the speech sets the frame count, or the video does

# Where the weights come from: the real checkpoint (found or downloaded), seeded random weights of the
# full-size or the tiny architecture (timing and tests only), or the small proxy model trained on three
# clips that ships inside the package (weights/proxy.py).
WEIGHT_CHOICES = ("auto", "checkpoint", "random", "random-tiny", "proxy")

# The seed of a run when none is given (upstream's inference scripts use it too).
DEFAULT_SEED = 1247

# How a video shorter than the speech continues (media/video.py), and which face is taken when a frame
# has several (face/landmarks.py).
LOOP_MODES = ("pingpong", "loop", "freeze")
FACE_CHOICES = ("largest", "center")
# Where the face landmarks come from: MediaPipe (built in) or InsightFace (upstream's, an optional extra).
FACE_DETECTORS = ("mediapipe", "insightface")
