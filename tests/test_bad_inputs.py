"""The bad-input corpus: every input a render farm will meet, through the real CLI in a subprocess.

Error cases: one `error:` line naming the problem, the documented exit code, no
traceback, nothing at the output path, no scratch or partial files left.
Valid but unusual inputs (silent speech, one frame, 8K, odd sizes, VFR,
rotation, grey, 10-bit, PNG with alpha, several faces) run as one batch, so the
models load once; that batch also holds one broken row, which must fail
alone and make the batch exit 8.

The error cases run concurrently (each process spends most of its time
importing), once per module; the tests then read their results.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from clitools import FAST, Ran, ffmpeg, leftovers, run_cli, run_cli_here, stream_summary

from latentsync_cli.errors import ExitCode
from latentsync_cli.media.audio import write_wav
from latentsync_cli.media.encode import VideoEncoder
from latentsync_cli.media.synthetic import (
    face_frames,
    face_photo,
    make_face_clip,
    make_speech,
    make_still_image,
    make_vfr_clip,
)

SECONDS = 0.4  # the error cases' inputs
SHORT_SECONDS = 0.2  # the valid inputs' length: one short window each (the CI box is slow)
SIZE = (320, 240)
FILE_SIZE_LIMIT = 16 * 1024  # bytes: the "full disk" of the disk-full case


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    height, width = frames[0].shape[:2]
    with VideoEncoder(path, width, height, fps=25, preset="ultrafast") as encoder:
        for frame in frames:
            encoder.write(frame)
    return path


def tiny_face_frames(count: int) -> list[np.ndarray]:
    """The face photo shrunk to 14 x 12 pixels in a 320 x 240 frame: too small to find."""
    small = cv2.resize(face_photo(), (12, 14), interpolation=cv2.INTER_AREA)
    frame = np.full((240, 320, 3), 90, dtype=np.uint8)
    frame[100:114, 150:162] = small
    return [frame] * count


def limit_file_size() -> None:
    """In the child: files may not grow past FILE_SIZE_LIMIT, and a write past it fails instead of killing."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    paths = {
        "clip": make_face_clip(folder / "clip.mp4", SECONDS, size=SIZE, preset="ultrafast"),
        "voice": make_speech(folder / "voice.wav", SECONDS, use_espeak=False),
        "folder": folder,
    }
    (folder / "a folder.mp4").mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("these are not frames\n" * 20)
    whole = paths["clip"].read_bytes()  # the index is at the front (faststart): cut inside the first frame
    (folder / "cut.mp4").write_bytes(whole[: whole.index(b"mdat") + 64])
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000", "-t", "1", folder / "speech only.m4a")
    write_wav(folder / "zero.wav", np.zeros(0, dtype=np.float32))
    write_wav(folder / "silence.wav", np.zeros(int(16000 * SECONDS), dtype=np.float32))
    write_wav(folder / "blip.wav", np.full(160, 0.1, dtype=np.float32))  # 10 ms: shorter than one frame
    (folder / "steps.toml").write_text("[modes.turbo]\nsteps = 5000\n")
    write_clip(folder / "no face.mp4", [np.full((240, 320, 3), level, np.uint8) for level in range(40, 90, 5)])
    write_clip(folder / "tiny face.mp4", tiny_face_frames(10))
    checkpoints = folder / "checkpoints"
    (checkpoints / "whisper").mkdir(parents=True)
    (checkpoints / "vae").mkdir()  # every file present, so the loader reaches the corrupt UNet
    (checkpoints / "vae" / "config.json").write_text("{}")
    (checkpoints / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (checkpoints / "latentsync_unet.pt").write_bytes(b"not a checkpoint at all" * 100)
    (checkpoints / "whisper" / "tiny.pt").write_bytes(b"also garbage" * 100)
    (folder / "exists.mp4").write_bytes(b"an earlier result")
    os.mkfifo(folder / "pipe.mp4")  # a video from a named pipe: never opened, refused at once
    return paths


def error_cases(corpus: dict[str, Path]) -> dict[str, tuple[list, int, list[str], Path]]:
    """name -> (arguments, exit code, fragments of the error line, output path that must not appear)."""
    f, clip, voice = corpus["folder"], corpus["clip"], corpus["voice"]
    bad_input, output, usage = ExitCode.BAD_INPUT, ExitCode.OUTPUT, ExitCode.USAGE

    def case(name, arguments, code, fragments, target=None):
        target = target or f / f"{name}.out.mp4"
        # FAST first: a case's own flag (e.g. --weights checkpoint) comes later and wins.
        return name, (["sync", *FAST, *arguments, "-o", target], int(code), fragments, target)

    return dict([
        case("missing video", [f / "nothing here.mp4", voice], bad_input, ["nothing here.mp4", "not found"]),
        case("missing audio", [clip, f / "nothing.wav"], bad_input, ["nothing.wav", "not found"]),
        case("folder", [f / "a folder.mp4", voice], bad_input, ["a folder.mp4", "folder"]),
        case("empty file", [f / "empty.mp4", voice], bad_input, ["empty.mp4", "empty"]),
        case("video from a named pipe", [f / "pipe.mp4", voice], bad_input,
             ["pipe.mp4", "named pipe", "read several times", "save it to a file"]),
        case("text named mp4", [f / "notes.mp4", voice], bad_input, ["notes.mp4"]),
        case("truncated mp4", [f / "cut.mp4", voice], bad_input, ["cut.mp4"]),
        case("no video stream", [f / "speech only.m4a", voice], bad_input, ["speech only.m4a", "no video stream"]),
        case("no audio stream", [clip, clip], bad_input, ["clip.mp4", "no audio stream"]),
        case("zero-length audio", [clip, f / "zero.wav"], bad_input, ["zero.wav"]),
        case("no face", [f / "no face.mp4", voice], bad_input, ["no face.mp4", "no face"]),
        case("tiny face", [f / "tiny face.mp4", voice], bad_input, ["tiny face.mp4", "no face"]),
        case("output folder missing", [clip, voice], output, ["does not exist"], f / "nowhere" / "out.mp4"),
        case("output exists", [clip, voice], output, ["exists.mp4", "--overwrite"], f / "exists.mp4"),
        case("output is an input", [clip, voice, "--overwrite"], output, ["same as an input"], clip),
        case("unwritable folder", [clip, voice], output, ["not writable"], Path("/proc/out.mp4")),
        case("unknown mode", [clip, voice, "--mode", "warp"], usage, ["--mode", "warp"]),
        # A flag error is reported before anything about the files.
        case("unknown mode and output exists", [clip, voice, "--mode", "warp"], usage, ["--mode"], f / "exists.mp4"),
        case("unknown quality preset", [clip, voice, "--quality", "cinema"], usage, ["cinema"]),
        case("guidance below one", [clip, voice, "--guidance", "0.5"], usage, ["--guidance"]),
        case("window too long", [clip, voice, "--window", "30"], usage, ["--window"]),
        case("batch with a video", [clip, "--batch", f / "jobs.csv"], usage, ["--batch", "VIDEO"]),
        case("unknown loop", [clip, voice, "--loop", "sideways"], usage, ["--loop", "sideways"]),
        case("steps past the schedulers' range", [clip, voice, "--steps", "1001", "--scheduler", "ddim"], usage,
             ["--steps 1001", "998"]),
        case("a huge steps value", [clip, voice, "--steps", "99999999999999999999"], usage, ["--steps", "998"]),
        case("steps past the range in a presets file", [clip, voice, "--presets", f / "steps.toml"], usage,
             ["steps.toml", "modes.turbo.steps", "998"]),
        case("nvenc where it does not open", [clip, voice, "--encoder", "h264_nvenc"], usage, ["h264_nvenc"]),
        case("unknown encoder", [clip, voice, "--encoder", "x265"], usage, ["--encoder", "x265"]),
        case("speech shorter than a frame", [clip, f / "blip.wav"], bad_input, ["blip.wav", "10 ms", "40 ms"]),
        # User text is printed as typed: no emoji codes, no markup.
        case("emoji code in a flag", [clip, voice, "--device", "cuda:-1"], usage, ["--device cuda:-1"]),
        case("emoji code in a file name", [f / ":smile:.mp4", voice], bad_input, [":smile:.mp4", "not found"]),
        case("corrupt checkpoint", [clip, voice, "--weights", "checkpoint", "--checkpoint-dir", f / "checkpoints"],
             ExitCode.WEIGHTS, ["latentsync_unet.pt"]),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def error_runs(corpus) -> dict[str, Ran]:
    cases = error_cases(corpus)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, *arguments) for name, (arguments, *_rest) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


CASE_NAMES = list(error_cases({"folder": Path("f"), "clip": Path("c.mp4"), "voice": Path("v.wav")}))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_specific_error_line_and_leaves_nothing(corpus, error_runs, name):
    _arguments, code, fragments, target = error_cases(corpus)[name]
    ran = error_runs[name]
    assert ran.code == code, ran.stderr
    assert "Traceback" not in ran.stderr
    assert len(ran.error_lines) == 1, ran.stderr
    line = ran.error_lines[0]
    for fragment in fragments:
        assert fragment in line
    if name not in ("output exists", "output is an input", "unknown mode and output exists"):
        assert not target.exists()
    assert leftovers(corpus["folder"]) == []
    assert (corpus["folder"] / "exists.mp4").read_bytes() == b"an earlier result"


def test_full_disk_is_an_output_error_and_leaves_nothing(corpus, tmp_path):
    """A real failed write: RLIMIT_FSIZE makes writes past the limit fail with EFBIG (SIGXFSZ ignored)."""
    target = tmp_path / "out.mp4"
    ran = run_cli("sync", corpus["clip"], corpus["voice"], "-o", target, *FAST, preexec_fn=limit_file_size)
    assert ran.code == ExitCode.OUTPUT, ran.stderr
    assert "Traceback" not in ran.stderr
    assert len(ran.error_lines) == 1 and "disk full" in ran.error_lines[0], ran.stderr
    assert not target.exists()
    assert leftovers(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A real filesystem with 0 bytes free: a small tmpfs, filled up (needs the right to mount, as root has)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(mount_point / "filler", "wb", buffering=0) as filler:
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        assert shutil.disk_usage(mount_point).free == 0
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_with_no_byte_free_is_an_output_error(corpus, full_disk):
    target = full_disk / "out.mp4"
    ran = run_cli("sync", corpus["clip"], corpus["voice"], "-o", target, *FAST)
    assert ran.code == ExitCode.OUTPUT, ran.stderr
    assert len(ran.error_lines) == 1 and "disk full" in ran.error_lines[0], ran.stderr
    assert "Traceback" not in ran.stderr
    assert not target.exists() and leftovers(full_disk) == []


def test_a_work_dir_on_a_full_disk_leaves_no_temporary_files(corpus, tmp_path):
    work_dir = tmp_path / "work"
    dead_job = work_dir / "users" / "0123"  # the lease of a job that died an hour ago, a temporary file in it
    dead_job.mkdir(parents=True)
    (dead_job / "lease.json").write_text(json.dumps({"token": "0123", "host": "deadnode", "pid": 4}))
    (dead_job / "window-00000.npz").write_bytes(b"half a window")
    older_version = work_dir / "window-00001.tmp-999999"  # what a version before leases left
    older_version.write_bytes(b"half a window")
    for path in (dead_job / "lease.json", older_version):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    arguments = ["sync", corpus["clip"], corpus["voice"], "-o", tmp_path / "out.mp4", "--work-dir", work_dir, *FAST]
    ran = run_cli(*arguments, preexec_fn=limit_file_size)
    assert ran.code == ExitCode.OUTPUT, ran.stderr
    assert len(ran.error_lines) == 1 and "disk full" in ran.error_lines[0], ran.stderr
    assert list(work_dir.glob("*.tmp-*")) == [] and list((work_dir / "users").iterdir()) == []  # its own, the dead's
    assert leftovers(tmp_path) == []


def test_sync_json_that_fails_prints_a_json_error_on_stdout(corpus, tmp_path):
    ran = run_cli("sync", corpus["folder"] / "nothing.mp4", corpus["voice"], "--json", *FAST)
    assert ran.code == ExitCode.BAD_INPUT
    error = json.loads(ran.stdout)
    assert error["exit_code"] == ExitCode.BAD_INPUT and "nothing.mp4" in error["error"]


def test_debug_adds_the_traceback_and_changes_nothing_else(corpus, tmp_path):
    f, clip, voice = corpus["folder"], corpus["clip"], corpus["voice"]
    for arguments, code in (
        ([f / "nothing.mp4", voice], ExitCode.BAD_INPUT),
        ([clip, voice, "--mode", "warp"], ExitCode.USAGE),  # after FAST: this --mode wins
    ):
        plain = run_cli("sync", *FAST, *arguments, "--json", "-o", tmp_path / "out.mp4")
        debug = run_cli("sync", *FAST, *arguments, "--json", "-o", tmp_path / "out.mp4", "--debug")
        assert plain.code == debug.code == code, debug.stderr
        assert debug.stdout == plain.stdout and json.loads(debug.stdout)["exit_code"] == code
        assert debug.error_lines == plain.error_lines and len(debug.error_lines) == 1
        assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr


def write_manifest(folder: Path, text: str) -> Path:
    manifest = folder / "jobs.csv"
    manifest.write_text(text)
    return manifest


@pytest.mark.parametrize(
    "rows, fragments",
    [
        ("clip.mp4,voice.wav,same.mp4,\nclip.mp4,voice.wav,same.mp4,\n", ["rows 1 and 2", "same.mp4"]),
        ("clip.mp4,voice.wav,a.mp4,\nclip.mp4,voice.wav,b.mp4,9999\n", ["row 2", "steps"]),
        ("clip.mp4,voice.wav,c.mp4,\n,voice.wav,d.mp4,\n", ["row 2", "video"]),
    ],
    ids=["two rows write one output", "a bad value", "an empty video"],
)
def test_a_manifest_with_a_bad_row_is_refused_before_any_job_runs(corpus, rows, fragments):
    folder = corpus["folder"]
    manifest = write_manifest(folder, "video,audio,output,steps\n" + rows)
    ran = run_cli("sync", "--batch", manifest, *FAST)
    assert ran.code == ExitCode.USAGE, ran.stderr
    assert len(ran.error_lines) == 1 and all(fragment in ran.error_lines[0] for fragment in fragments), ran.stderr
    assert not any((folder / name).exists() for name in ("same.mp4", "a.mp4", "b.mp4", "c.mp4", "d.mp4"))


def test_a_row_whose_output_is_a_folder_fails_it_is_not_skipped(corpus, tmp_path):
    (tmp_path / "taken.mp4").mkdir()
    for name in ("clip", "voice"):
        (tmp_path / corpus[name].name).symlink_to(corpus[name])
    manifest = write_manifest(tmp_path, "video,audio,output\nclip.mp4,voice.wav,taken.mp4\n")
    ran = run_cli("sync", "--batch", manifest, "--json", *FAST)
    assert ran.code == ExitCode.BATCH_FAILED, ran.stderr
    record = json.loads(ran.stdout.splitlines()[0])
    assert record["status"] == "failed" and record["exit_code"] == ExitCode.OUTPUT and "folder" in record["error"]


# --- valid but unusual inputs: one batch ----------------------------------------------------------------


@pytest.fixture(scope="module")
def unusual(corpus) -> dict:
    f = corpus["folder"] / "unusual"
    f.mkdir()
    voice = make_speech(f / "voice.wav", SHORT_SECONDS, use_espeak=False)
    short_voice = make_speech(f / "short.wav", 0.08, use_espeak=False)  # a few frames for the 8K clip
    write_wav(f / "silence.wav", np.zeros(int(16000 * SHORT_SECONDS), dtype=np.float32))
    make_face_clip(f / "plain.mp4", SHORT_SECONDS, size=SIZE, preset="ultrafast")
    write_clip(f / "one frame.mp4", list(face_frames(0.04, 25, SIZE)))
    big = [cv2.resize(frame, (7680, 4320), interpolation=cv2.INTER_LINEAR) for frame in face_frames(0.12, 25, SIZE)]
    write_clip(f / "8k.mp4", big)
    make_face_clip(f / "odd.mp4", SHORT_SECONDS, size=(721, 405), preset="ultrafast")
    make_vfr_clip(f / "vfr.mp4", SHORT_SECONDS, size=SIZE)
    # A phone clip: pixels stored sideways, display rotation metadata turns them upright (counter-clockwise).
    write_clip(
        f / "sideways.mp4",
        [np.ascontiguousarray(np.rot90(frame, -1)) for frame in face_frames(SHORT_SECONDS, 25, SIZE)],
    )
    ffmpeg("-display_rotation", 90, "-i", f / "sideways.mp4", "-c", "copy", f / "rotated.mp4")
    for name, pixel_format in (("grey", "gray"), ("10bit", "yuv420p10le")):
        ffmpeg(
            "-i",
            f / "plain.mp4",
            "-pix_fmt",
            pixel_format,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            f / f"{name}.mp4",
        )
    make_still_image(f / "portrait.png", size=(240, 320), alpha=True)
    two = [np.hstack([frame, frame[:, ::-1]]) for frame in face_frames(SHORT_SECONDS, 25, SIZE)]
    write_clip(f / "two faces.mp4", two)
    # An MKV whose first stream is a one-frame picture without a face, and whose default stream is the video.
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:size={SIZE[0]}x{SIZE[1]}", "-frames:v", 1, "-c:v", "mjpeg",
           f / "still.jpg")  # fmt: skip
    ffmpeg("-i", f / "still.jpg", "-i", f / "plain.mp4", "-map", "0:v", "-map", "1:v", "-c", "copy",
           "-disposition:v:0", 0, "-disposition:v:1", "default", f / "two streams.mkv")  # fmt: skip
    # Speech from a named pipe, written when the job opens it, as a program piping its output in would.
    os.mkfifo(f / "pipe.wav")
    threading.Thread(target=lambda: (f / "pipe.wav").write_bytes(voice.read_bytes()), daemon=True).start()
    rows = [
        ("plain.mp4", "silence.wav", "silent speech"),
        ("one frame.mp4", "voice.wav", "one frame"),
        ("8k.mp4", "short.wav", "8K"),
        ("odd.mp4", "voice.wav", "721 x 405"),
        ("vfr.mp4", "voice.wav", "variable frame rate"),
        ("rotated.mp4", "voice.wav", "rotated"),
        ("grey.mp4", "voice.wav", "grey"),
        ("10bit.mp4", "voice.wav", "10-bit"),
        ("portrait.png", "voice.wav", "PNG with alpha"),
        ("two faces.mp4", "voice.wav", "two faces"),
        ("two streams.mkv", "voice.wav", "a still before the default video stream"),
        ("plain.mp4", "pipe.wav", "speech from a named pipe"),
        ("missing.mp4", "voice.wav", "broken row"),
    ]
    manifest = f / "jobs.csv"
    lines = ["video,audio,output"] + [
        f"{video},{audio},out/{number}.mp4" for number, (video, audio, _) in enumerate(rows, 1)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    (f / "out").mkdir()
    ran = run_cli_here("sync", "--batch", manifest, "--json", *FAST, "--window", "16")
    records = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    return {"ran": ran, "records": records, "rows": rows, "folder": f, "short_voice": short_voice, "voice": voice}


def test_unusual_valid_inputs_all_succeed(unusual):
    by_row = {record["job"]: record for record in unusual["records"]}
    for number, (video, _audio, what) in enumerate(unusual["rows"][:-1], 1):
        record = by_row[number]
        assert record["status"] == "ok", f"{what} ({video}): {record['error']}"
        assert record["frames"] > 0
        assert stream_summary(Path(record["output"])) == (1, 1, record["frames"]), what


def test_silent_speech_is_warned_about(unusual):
    assert "silence.wav: the speech is silent" in unusual["ran"].stderr


def test_the_video_stream_used_is_said_when_there_are_several(unusual):
    assert "two streams.mkv: 2 video streams; using stream #0:1 (h264, 320x240, default)" in unusual["ran"].stderr


def test_a_broken_row_fails_alone_and_the_batch_exits_8(unusual):
    ran = unusual["ran"]
    assert ran.code == ExitCode.BATCH_FAILED, ran.stderr
    broken = unusual["records"][-1]
    assert broken["status"] == "failed" and broken["exit_code"] == ExitCode.BAD_INPUT
    assert "missing.mp4" in broken["error"] and "not found" in broken["error"]
    assert len(ran.error_lines) == 1 and f"1 of {len(unusual['rows'])} jobs failed" in ran.error_lines[0]
    assert "Traceback" not in ran.stderr
    assert leftovers(unusual["folder"] / "out") == []
