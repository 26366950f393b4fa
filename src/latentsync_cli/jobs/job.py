"""What a job is asked to do, what `prepare` found out about it, and what it made.

    Job            the request: files, settings (a SettingsRequest) and how the job is done
    PreparedJob    every check passed, the video probed and the speech decoded once
    FinishedJob    the pipeline's result, with the weights that made it

The fields of Job declared with `option(...)` are also `sync`'s flags and batch
columns (options.py): declared here once, read by the CLI and the manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentsync_cli.constants import (
    FACE_CHOICES,
    FACE_DETECTORS,
    FPS_CHOICES,
    LENGTH_CHOICES,
    LOOP_MODES,
    WEIGHT_CHOICES,
)
from latentsync_cli.jobs.lease import LeaseTerms
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.media.encode import DEFAULT_CRF, ENCODER_CHOICES, EncoderChoice
from latentsync_cli.media.outputs import CODEC_CHOICES, STREAM_FORMATS, OutputSpec, Speech
from latentsync_cli.media.video import VideoInfo
from latentsync_cli.options import INPUT_AND_OUTPUT, option
from latentsync_cli.settings.request import SettingsRequest
from latentsync_cli.settings.run_settings import ResolvedSettings
from latentsync_cli.weights.info import WeightsInfo

if TYPE_CHECKING:  # heavy modules (torch, diffusers, MediaPipe): imported only where a job runs
    from latentsync_cli.pipeline import SyncResult


@dataclass(frozen=True)
class Job:
    """What one `latentsync sync` is asked to do. Paths may be relative; nothing is checked yet."""

    video: Path  # a video, an image sequence (pattern or folder), a still image, or "-" (stdin)
    audio: Path | None = None  # None: the video's own audio track
    output: Path | None = None  # None: beside the video (jobs/outputs.default_output_path); "-": stdout
    settings: SettingsRequest = field(default_factory=SettingsRequest)
    weights: str = option(
        "auto", "auto (the real weights), random or random-tiny (timing and tests only), or proxy (a small model "
        "trained on three clips, shipped: it draws mouths, far below LatentSync 1.6's quality).", INPUT_AND_OUTPUT,
        choices=WEIGHT_CHOICES,
    )  # fmt: skip
    checkpoint_dir: Path | None = option(None, "Folder with the weights (see `latentsync models`).", INPUT_AND_OUTPUT)
    loop: str = option("pingpong", "How a video shorter than the speech continues.", INPUT_AND_OUTPUT,
                       choices=LOOP_MODES)  # fmt: skip
    face: str = option("largest", "Which face when there are several.", INPUT_AND_OUTPUT, choices=FACE_CHOICES)
    face_detector: str = option(
        "mediapipe", "Face landmarks: mediapipe (built in) or insightface (upstream's; needs "
        "latentsync[insightface] and InsightFace's buffalo_l models).", INPUT_AND_OUTPUT, choices=FACE_DETECTORS,
    )  # fmt: skip
    mask_feather: float = option(
        0.0, "Soften the edge where the new mouth meets the face (Gaussian sigma in pixels).", INPUT_AND_OUTPUT,
        minimum=0.0, metavar="PX",
    )  # fmt: skip
    fps: str = option(
        "source", "Output frame rate: source (a constant-rate video keeps its own; a variable-rate one becomes 25) "
        "or 25.", INPUT_AND_OUTPUT, choices=FPS_CHOICES,
    )  # fmt: skip
    length: str = option(
        "speech", "speech: the speech sets the length (a shorter video continues as --loop says); video: exactly "
        "the video's frames (the speech cut, or padded with silence).", INPUT_AND_OUTPUT, choices=LENGTH_CHOICES,
    )  # fmt: skip
    input_fps: str = option("25", "Frame rate of an image sequence VIDEO: 24, 23.976, 30000/1001, ...",
                            INPUT_AND_OUTPUT, metavar="FPS")  # fmt: skip
    codec: str = option(
        "auto", "Video codec; auto: by the output's name (MP4 H.264, MOV the source's ProRes/DNxHR/H.264/HEVC, "
        "MXF DNxHR, MKV FFV1, a sequence its suffix's).", INPUT_AND_OUTPUT, choices=CODEC_CHOICES,
    )  # fmt: skip
    format: str | None = option(None, "Container of -o - (stdout).", INPUT_AND_OUTPUT, choices=STREAM_FORMATS,
                                shown_default="nut", batch=False)  # fmt: skip
    crf: int = option(DEFAULT_CRF, "x264/x265 quality: lower is better and bigger.", INPUT_AND_OUTPUT,
                      minimum=0, maximum=51)  # fmt: skip
    encoder: str = option(
        "auto", "H.264 encoder (auto: h264_nvenc where it opens, else libx264).", INPUT_AND_OUTPUT,
        choices=ENCODER_CHOICES,
    )  # fmt: skip
    overwrite: bool = option(False, "Replace an existing output.", INPUT_AND_OUTPUT, batch=False)
    work_dir: Path | None = None  # keep finished windows here, so that a killed job resumes
    keep_output: bool = True  # False: `profile` without -o (the MP4 is made in a temporary folder and dropped)
    shard: Shard | None = None  # compute only this shard's windows into the work dir (no output is written)
    finalize: bool = False  # only restore, encode and mux the windows in the work dir (all must be there)
    input_fd: int = 0  # the file descriptor a video "-" is read from (stdin)
    output_fd: int = 1  # the file descriptor -o - writes the stream to (the CLI keeps stdout for it alone)


@dataclass(frozen=True)
class PreparedJob:
    """A job whose flags, files, output path and settings have been checked, before any model work."""

    job: Job
    video: Path  # absolute
    audio: Path | None  # absolute
    output: Path | None  # absolute: the file or the sequence's folder (what the job claims); None: not kept, stdout
    video_info: VideoInfo  # the video, probed once for the whole job, at the output's frame rate
    speech: np.ndarray  # float32 mono 16 kHz, decoded once for the whole job (cut or padded for --length video)
    resolved: ResolvedSettings
    encoder: EncoderChoice  # the video encoder and why
    num_frames: int  # output frames
    output_spec: OutputSpec | None  # what is written where; None: not kept (profile without -o)
    speech_source: Speech | None  # the file whose audio stream the output carries, at its own rate and channels;
    # None: a named pipe (read once), whose decoded 16 kHz mono speech the output carries
    warnings: tuple[str, ...] = ()  # for the user: notes of the resolution, silent speech, ...
    lease: LeaseTerms = LeaseTerms()  # how long the claims of a job that died block others (LATENTSYNC_LEASE_SECONDS)


@dataclass(frozen=True)
class FinishedJob:
    prepared: PreparedJob
    result: SyncResult
    weights: WeightsInfo
