"""Plates through the real CLI, as a post house would send them: a 10-bit ProRes plate at 24 fps, a 16-bit
PNG and a half-float EXR sequence, a 29.97 fps clip through a pipe. Each comes back at its own rate and
frame count (--length video), in its own format and depth, and every pixel outside the face's paste region
is the decoded source's, bit for bit; shards and finalize write the same sequence as one run.

The plates are 320x240 and 0.6 s, synced with the small proxy model (128 px faces).
"""

from __future__ import annotations

import os
import subprocess
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from clitools import FAST, cli_command, cli_env, leftovers, run_cli_here

from latentsync_cli.errors import ExitCode
from latentsync_cli.face.align import crop_size
from latentsync_cli.face.restore import covered_region
from latentsync_cli.face.track import FaceTrack
from latentsync_cli.media.synthetic import make_face_clip, make_plate, make_speech
from latentsync_cli.media.video import probe_video, read_frames

SECONDS = 0.6
SIZE = (320, 240)
TINY_RESOLUTION = 128  # the face crop of --weights proxy
FLAGS = [*FAST, "--window", "4", "--progress", "none", "--length", "video"]
NTSC_VIDEO = Fraction(30000, 1001)


def ffmpeg_command(*args) -> list[str]:
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]


def description(path) -> str:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False).stderr


def frames_at(path, rate, count, input_fps=25) -> list[np.ndarray]:
    """Every frame of a plate as the tool decodes it (16-bit, float or 8-bit RGB), at `rate`."""
    info = probe_video(path, input_fps).at_rate(rate, count)
    return list(read_frames(info, count))


def assert_same_outside_the_face(source: list[np.ndarray], output: list[np.ndarray], work_dir: Path) -> None:
    """No difference at all outside each frame's paste region (from the job's face track), and a new face inside."""
    track = FaceTrack.load(work_dir / "track.npz")
    width, height = crop_size(TINY_RESOLUTION)
    assert len(source) == len(output) == track.num_frames
    changed_inside = 0
    for number, (before, after) in enumerate(zip(source, output)):
        assert before.dtype == after.dtype and before.shape == after.shape
        differs = (before.view(np.uint8) != after.view(np.uint8)).reshape(*before.shape[:2], -1).any(axis=2)
        if track.has_face[number]:
            top, bottom, left, right = covered_region(track.affines[number], (height, width), before.shape[:2])
            changed_inside += int(differs[top:bottom, left:right].any())
            differs[top:bottom, left:right] = False
        assert not differs.any(), f"frame {number}: {int(differs.sum())} pixels changed outside the face"
    assert changed_inside == int(track.has_face.sum()) > 0


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plates")
    speech = make_speech(folder / "voice16k.wav", 0.9, use_espeak=False)
    take = folder / "take.wav"  # a 48 kHz stereo 24-bit take, longer than the plates: cut to them
    subprocess.run(ffmpeg_command("-i", speech, "-ar", "48000", "-ac", "2", "-c:a", "pcm_s24le", take), check=True)
    prores = ["-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le", "-timecode", "01:00:00:00",
              "-vf", "setparams=color_primaries=bt709:color_trc=bt709", "-colorspace", "bt709"]  # fmt: skip
    (folder / "png16").mkdir()
    (folder / "exr").mkdir()
    return {
        "folder": folder,
        "take": take,
        "prores": make_plate(folder / "plate.mov", SECONDS, prores, fps=24, size=SIZE, samples="uint16"),
        "clip2997": make_face_clip(folder / "clip.mp4", SECONDS, fps=NTSC_VIDEO, size=SIZE, preset="ultrafast"),
        "png16": make_plate(folder / "png16" / "f_%04d.png", SECONDS, ["-pix_fmt", "rgb48be", "-start_number", "1001"],
                            fps=24, size=SIZE, samples="uint16").parent,  # fmt: skip
        "exr": make_plate(folder / "exr" / "plate.%04d.exr", SECONDS, ["-c:v", "exr", "-format", "half"], fps=25,
                          size=SIZE, samples="float32").parent,  # fmt: skip
    }


def sync(*args):
    """`latentsync sync ARGS` in this process (the pipe tests below run it as a process between two ffmpegs)."""
    ran = run_cli_here("sync", *args, *FLAGS)
    assert ran.code == 0, ran.stderr
    return ran


def test_a_10bit_prores_plate_comes_back_as_10bit_prores_at_its_rate(plates, tmp_path):
    out = tmp_path / "plate_synced.mov"
    sync(plates["prores"], plates["take"])  # the default output keeps the plate's container, hence its codec
    os.replace(plates["prores"].with_name("plate_synced.mov"), out)
    text = description(out)
    assert "prores (HQ)" in text and "yuv422p10le(tv, bt709, progressive)" in text and "24 fps" in text, text
    assert "pcm_s24le" in text and "48000 Hz, stereo" in text and "timecode        : 01:00:00:00" in text
    assert probe_video(out).duration_s == pytest.approx(round(SECONDS * 24) / 24, abs=0.01)
    stored = subprocess.run(ffmpeg_command("-i", out, "-map", "0:v", "-f", "framecrc", "-"), capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert sum(1 for line in stored.splitlines() if line.startswith("0,")) == round(SECONDS * 24)


def test_ffv1_output_is_the_decoded_source_outside_the_face(plates, tmp_path):
    out, work = tmp_path / "out.mkv", tmp_path / "work"
    sync(plates["prores"], plates["take"], "-o", out, "--work-dir", work)
    assert "ffv1" in description(out) and "gbrp16le" in description(out) and "flac" in description(out)
    count = round(SECONDS * 24)
    assert_same_outside_the_face(frames_at(plates["prores"], 24, count), frames_at(out, 24, count), work)


@pytest.fixture(scope="module")
def png_run(plates, tmp_path_factory) -> tuple[Path, Path]:
    """The 16-bit PNG plate synced into a PNG sequence once: its pattern and work dir."""
    folder = tmp_path_factory.mktemp("png-run")
    out, work = folder / "synced" / "f_%04d.png", folder / "work"
    sync(plates["png16"], plates["take"], "--input-fps", "24", "-o", out, "--work-dir", work)
    return out, work


def test_a_16bit_png_sequence_comes_back_as_one_bit_identical_outside_the_face(plates, png_run):
    out, work = png_run
    count = round(SECONDS * 24)
    names = sorted(os.listdir(out.parent))
    assert names == ["f.wav", *(f"f_{number:04d}.png" for number in range(1001, 1001 + count))]
    assert "rgb48be" in description(out.parent / "f_1001.png")
    assert "pcm_s24le" in description(out.parent / "f.wav") and "48000 Hz, stereo" in description(out.parent / "f.wav")
    source, output = frames_at(plates["png16"], 24, count, 24), frames_at(out.parent, 24, count, 24)
    assert_same_outside_the_face(source, output, work)
    assert leftovers(out.parent.parent) == []


def test_an_exr_sequence_comes_back_as_an_exr_sequence(plates, tmp_path):
    out, work = tmp_path / "comp" / "plate.%04d.exr", tmp_path / "work"
    sync(plates["exr"], plates["take"], "-o", out, "--work-dir", work)
    count = round(SECONDS * 25)
    assert len([name for name in os.listdir(out.parent) if name.endswith(".exr")]) == count
    assert "gbrpf16le" in description(out.parent / "plate.0001.exr")  # half stays half
    assert_same_outside_the_face(frames_at(plates["exr"], 25, count), frames_at(out.parent, 25, count), work)


def test_shards_and_finalize_write_the_sequence_one_run_writes(plates, png_run, tmp_path):
    single = png_run[0]
    sharded, work = tmp_path / "sharded" / "f_%04d.png", tmp_path / "work"
    for shard in ("2/2", "1/2"):
        sync(plates["png16"], plates["take"], "--input-fps", "24", "-o", sharded, "--work-dir", work, "--shard", shard)
        assert not sharded.parent.exists()  # a shard writes only into the work dir
    sync(plates["png16"], plates["take"], "--input-fps", "24", "-o", sharded, "--work-dir", work, "--finalize")
    names = sorted(os.listdir(single.parent))
    assert names == sorted(os.listdir(sharded.parent))
    for name in names:
        assert (single.parent / name).read_bytes() == (sharded.parent / name).read_bytes(), name


def test_the_pipe_example_works_and_keeps_the_rate_and_frame_count(plates, tmp_path):
    """ffmpeg -i plate -f nut - | latentsync sync - voice.wav -o - --format nut | ffmpeg -i - -c:v prores_ks out.mov"""
    out = tmp_path / "out.mov"
    upstream = subprocess.Popen(ffmpeg_command("-i", plates["clip2997"], "-f", "nut", "-"), stdout=subprocess.PIPE)
    tool = subprocess.Popen(cli_command("sync", "-", plates["take"], "-o", "-", "--format", "nut", *FLAGS),
                            stdin=upstream.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())  # fmt: skip
    downstream = subprocess.Popen(ffmpeg_command("-i", "-", "-c:v", "prores_ks", out), stdin=tool.stdout,
                                  stderr=subprocess.PIPE)  # fmt: skip
    upstream.stdout.close()
    tool.stdout.close()
    _, tool_errors = tool.communicate(timeout=900)
    downstream.wait(timeout=120)
    assert (upstream.wait(), tool.returncode, downstream.returncode) == (0, 0, 0), tool_errors.decode()
    assert b"wrote the stream to stdout" in tool_errors  # the report went to stderr, the video alone to stdout
    text = description(out)
    assert "prores" in text and "29.97 fps" in text and "Audio:" in text
    stored = subprocess.run(ffmpeg_command("-i", out, "-map", "0:v", "-f", "framecrc", "-"), capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert sum(1 for line in stored.splitlines() if line.startswith("0,")) == round(SECONDS * NTSC_VIDEO)


def test_an_mp4_with_its_index_last_on_stdin_is_one_clear_line(plates, tmp_path):
    late = tmp_path / "late.mp4"
    subprocess.run(ffmpeg_command("-i", plates["clip2997"], "-c", "copy", late), check=True)  # no +faststart
    with open(late, "rb") as stdin:
        ran = subprocess.run(cli_command("sync", "-", plates["take"], "-o", tmp_path / "out.mp4", *FLAGS),
                             stdin=stdin, capture_output=True, text=True, env=cli_env(), timeout=300)  # fmt: skip
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert ran.returncode == ExitCode.BAD_INPUT and len(errors) == 1 and "-f nut" in errors[0], ran.stderr
    assert "Traceback" not in ran.stderr and sorted(os.listdir(tmp_path)) == ["late.mp4"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-o", "-", "--json"], "drop --json"),
        (["-o", "out.mov", "--format", "nut"], "--format nut is for -o -"),
        (["-o", "out.mp4", "--codec", "prores"], "--codec prores does not go in"),
        ([], "name the output with -o"),
    ],
)
def test_stream_flag_mistakes_are_usage_errors(plates, args, words):
    with open(plates["clip2997"], "rb") as stdin:
        ran = subprocess.run(cli_command("sync", "-", plates["take"], *args, *FLAGS), stdin=stdin,
                             capture_output=True, text=True, env=cli_env(), cwd=plates["folder"], timeout=300)  # fmt: skip
    assert ran.returncode == ExitCode.USAGE and words in ran.stderr, ran.stderr


def test_a_batch_writes_a_sequence_and_skips_a_finished_one(plates, tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "f_1001.png").write_bytes(b"an earlier result")
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "video,audio,output,input_fps\n"
        f"{plates['png16']},{plates['take']},fresh/f_%04d.png,24\n"
        f"{plates['png16']},{plates['take']},done/f_%04d.png,24\n"
    )
    ran = run_cli_here("sync", "--batch", manifest, "--json", *FLAGS)
    assert ran.code == 0, ran.stderr
    statuses = [line.split('"status": "')[1].split('"')[0] for line in ran.stdout.splitlines()]
    assert statuses == ["ok", "skipped"]
    assert len(list((tmp_path / "fresh").glob("f_*.png"))) == round(SECONDS * 24)
    assert os.listdir(done) == ["f_1001.png"] and leftovers(tmp_path) == []
