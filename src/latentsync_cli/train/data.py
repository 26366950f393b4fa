"""The proxy's training data: each demo clip's aligned faces and its own speech's audio features.

The frames are read and aligned exactly as `sync` reads and aligns them
(media.video.read_frames conforms demo3's 30 fps to 25; face.track.FaceLocator:
MediaPipe landmarks + FaceAligner with its smoothing), at the proxy's
resolution. The audio features are the pipeline's too: the clip's own speech
through the proxy's audio encoder, one (50, 384) row per 25 fps frame.

The last HOLDOUT_FRACTION of each clip is held out: the training never reads
it (neither as a target nor as a reference frame); the evaluation reads only it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsync_cli.face.detectors import LandmarkSource
from latentsync_cli.face.track import FaceLocator
from latentsync_cli.media.audio import load_audio
from latentsync_cli.media.video import probe_video, read_frames
from latentsync_cli.models.audio_features import AudioFeatureExtractor
from latentsync_cli.weights.proxy import AUDIO_STEM_GAIN, PROXY_RESOLUTION, proxy_audio_encoder, state_digest

HOLDOUT_FRACTION = 0.2
DEMO_CLIPS = ("demo1", "demo2", "demo3")  # <name>_video.mp4 in the media folder, each with its own speech


@dataclass
class Clip:
    name: str
    faces: np.ndarray  # uint8 (n, R, R, 3): the aligned face of each frame (grey where none was found)
    has_face: np.ndarray  # bool (n,)
    audio: np.ndarray  # float32 (n, 50, 384): the clip's own speech, one row per frame
    train_frames: int  # frames [0, train_frames) are for training, the rest are held out

    @property
    def num_frames(self) -> int:
        return len(self.faces)

    @property
    def held_out(self) -> range:
        return range(self.train_frames, self.num_frames)


def held_out_start(num_frames: int) -> int:
    return num_frames - round(num_frames * HOLDOUT_FRACTION)


def align_faces(video: Path, num_frames: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_frames` frames of `video` as `sync` reads and aligns them: faces and which frames have one."""
    faces = np.full((num_frames, resolution, resolution, 3), 127, dtype=np.uint8)
    has_face = np.zeros(num_frames, dtype=bool)
    locate = FaceLocator(resolution, LandmarkSource("mediapipe", stride=1, choose="largest"))
    frames = read_frames(video, num_frames, loop="pingpong")
    try:
        for number, frame in enumerate(frames):
            affine = locate.affine(number, frame)
            if affine is not None:
                faces[number] = locate.faces([frame], [affine])[0][0]
                has_face[number] = True
    finally:
        frames.close()
        locate.close()
    return faces, has_face


def prepare_clip(name: str, video: Path, extractor: AudioFeatureExtractor, resolution: int) -> Clip:
    audio = extractor(load_audio(video)).numpy()  # the video's own speech
    num_frames = min(probe_video(video).frame_count, len(audio))
    faces, has_face = align_faces(video, num_frames, resolution)
    return Clip(name, faces, has_face, audio[:num_frames], held_out_start(num_frames))


def prepare_dataset(
    media_dir: Path, out_dir: Path, resolution: int = PROXY_RESOLUTION, stem_gain: float = AUDIO_STEM_GAIN, log=print
) -> None:
    """Write <out_dir>/data/<clip>.npz for every demo clip, and data/info.json."""
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    encoder = proxy_audio_encoder(stem_gain=stem_gain)
    extractor = AudioFeatureExtractor(encoder)
    info = {"resolution": resolution, "holdout_fraction": HOLDOUT_FRACTION, **audio_encoder_info(encoder, stem_gain)}
    for name in DEMO_CLIPS:
        video = media_dir / f"{name}_video.mp4"
        clip = prepare_clip(name, video, extractor, resolution)
        np.savez(
            data_dir / f"{name}.npz",
            faces=clip.faces,
            has_face=clip.has_face,
            audio=clip.audio,
            train_frames=clip.train_frames,
        )
        info[name] = {"video": str(video), "frames": clip.num_frames, "train_frames": clip.train_frames,
                      "frames_without_face": int((~clip.has_face).sum())}
        log(f"{name}: {clip.num_frames} frames, {clip.train_frames} for training, "
            f"{int((~clip.has_face).sum())} without a face")
    (data_dir / "info.json").write_text(json.dumps(info, indent=2))


def audio_encoder_info(encoder, stem_gain: float) -> dict:
    return {"audio_encoder": state_digest(encoder), "audio_stem_gain": stem_gain}


def audio_stem_gain(info: dict) -> float:
    """The stem gain a run's data was prepared with (data/info.json); runs from before it was recorded used 1."""
    return info.get("audio_stem_gain", 1.0)


def refresh_audio(out_dir: Path, stem_gain: float = AUDIO_STEM_GAIN, log=print) -> None:
    """Recompute every prepared clip's audio rows with the encoder of `stem_gain`; the faces stay as they are.

    For a run that goes on from an earlier run's data made with another audio encoder."""
    data_dir = out_dir / "data"
    info = json.loads((data_dir / "info.json").read_text())
    encoder = proxy_audio_encoder(stem_gain=stem_gain)
    extractor = AudioFeatureExtractor(encoder)
    for clip in load_clips(out_dir):
        audio = extractor(load_audio(Path(info[clip.name]["video"]))).numpy()[: clip.num_frames]
        if len(audio) != clip.num_frames:
            raise SystemExit(f"{clip.name}: {len(audio)} audio rows for {clip.num_frames} frames")
        np.savez(data_dir / f"{clip.name}.npz", faces=clip.faces, has_face=clip.has_face, audio=audio,
                 train_frames=clip.train_frames)
        log(f"{clip.name}: audio rows recomputed (stem gain {stem_gain:g})")
    info.update(audio_encoder_info(encoder, stem_gain))
    (data_dir / "info.json").write_text(json.dumps(info, indent=2))


def load_clips(out_dir: Path, names: tuple[str, ...] = DEMO_CLIPS) -> list[Clip]:
    clips = []
    for name in names:
        with np.load(out_dir / "data" / f"{name}.npz") as data:
            clips.append(
                Clip(name, data["faces"], data["has_face"], data["audio"], int(data["train_frames"]))
            )
    return clips
