"""The unattended-job layer: output checks, batch manifests, resume store, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from latentsync_cli.errors import ExitCode, OutputError, UsageError
from latentsync_cli.face.track import FaceTrack
from latentsync_cli.jobs import cluster
from latentsync_cli.jobs.batch import read_manifest
from latentsync_cli.jobs.outputs import check_output_path
from latentsync_cli.jobs.shards import Shard
from latentsync_cli.jobs.workdir import WorkDirStore, job_fingerprint


def test_check_output_refuses_existing_without_overwrite(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_path(target, [], overwrite=False)
    assert check_output_path(target, [], overwrite=True) == target


def test_check_output_refuses_an_input_and_missing_folder(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    with pytest.raises(OutputError, match="same as an input"):
        check_output_path(video, [video], overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "out.mp4", [video], overwrite=False)


def test_check_output_refuses_unwritable_folder():
    # /sys refuses new files even to root, unlike a chmod-ed temp folder.
    with pytest.raises(OutputError, match="not writable"):
        check_output_path(Path("/sys/out.mp4"), [], overwrite=False)


def test_read_batch_csv_resolves_paths_and_keeps_options(tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("video,audio,output,mode\nclips/a.mp4,a.wav,out/a.mp4,turbo\n/abs/b.mp4,,,\n")
    jobs = read_manifest(manifest)
    assert [job.number for job in jobs] == [1, 2]
    assert jobs[0].video == tmp_path / "clips" / "a.mp4"
    assert jobs[0].audio == tmp_path / "a.wav"
    assert jobs[0].output == tmp_path / "out" / "a.mp4"
    assert jobs[0].options == {"mode": "turbo"}
    assert jobs[1].video == Path("/abs/b.mp4") and jobs[1].audio is None and jobs[1].output is None
    assert jobs[1].options == {}


def test_read_batch_jsonl(tmp_path):
    manifest = tmp_path / "jobs.jsonl"
    lines = [{"video": "a.mp4", "steps": 4}, {"video": "b.mp4", "output": "b_out.mp4"}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    jobs = read_manifest(manifest)
    assert jobs[0].options == {"steps": "4"}
    assert jobs[1].output == tmp_path / "b_out.mp4"


def test_read_batch_refuses_escaping_outputs_unknown_columns_and_bad_json(tmp_path):
    escaping = tmp_path / "escape.csv"
    escaping.write_text("video,output\na.mp4,../../elsewhere.mp4\n")
    with pytest.raises(UsageError, match="leaves the batch folder"):
        read_manifest(escaping)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("video,colour\na.mp4,red\n")
    with pytest.raises(UsageError, match="unknown column 'colour'"):
        read_manifest(unknown)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4"}\n{not json\n')
    with pytest.raises(UsageError, match="line 2"):
        read_manifest(broken)
    text_file = tmp_path / "jobs.txt"
    text_file.write_text("video\n")
    with pytest.raises(UsageError, match="unknown batch file type"):
        read_manifest(text_file)


def test_store_round_trip(tmp_path):
    faces = np.arange(2 * 3 * 4 * 4, dtype=np.float16).reshape(2, 3, 4, 4)
    with WorkDirStore(tmp_path / "work", fingerprint="abc") as store:
        store.save_window(0, faces, np.array([True, False, True]))
        assert store.has(0) and not store.has(1)
    again = WorkDirStore(tmp_path / "work", fingerprint="abc")
    np.testing.assert_array_equal(again.load_faces(0), faces)
    assert again.load_flags(0).tolist() == [True, False, True]


def test_store_clears_windows_of_another_job(tmp_path):
    with WorkDirStore(tmp_path / "work", fingerprint="first") as first:
        first.save(0, faces=np.zeros((1, 2, 2, 3), np.uint8))
    with WorkDirStore(tmp_path / "work", fingerprint="second") as other:
        assert not other.has(0) and other.finished_count() == 0


def test_store_refuses_another_job_while_the_work_dir_is_in_use(tmp_path):
    with WorkDirStore(tmp_path / "work", fingerprint="a") as first:
        first.save(0, faces=np.zeros((1, 2, 2, 3), np.uint8))
        with pytest.raises(OutputError, match="a running job with other inputs or settings"):
            WorkDirStore(tmp_path / "work", fingerprint="b")
        assert first.has(0)  # nothing of the running job was cleared
    WorkDirStore(tmp_path / "work", fingerprint="b").close()  # free again once the first one is closed


def test_shards_of_one_job_share_the_work_dir_but_one_shard_runs_once(tmp_path):
    work = tmp_path / "work"
    with WorkDirStore(work, "a", Shard(1, 2)) as first, WorkDirStore(work, "a", Shard(2, 2)) as second:
        first.save(0, faces=np.zeros((1, 2, 2, 3), np.uint8))
        assert second.has(0) and second.missing(range(3)) == [1, 2]
        with pytest.raises(OutputError, match="shard 1/2 of this job is already running"):
            WorkDirStore(work, "a", Shard(1, 2))


def test_the_face_track_is_computed_once_and_read_by_every_shard(tmp_path):
    computed = []

    def compute() -> FaceTrack:
        computed.append(1)
        return FaceTrack(np.array([True, False]), np.arange(12, dtype=np.float64).reshape(2, 2, 3))

    with WorkDirStore(tmp_path / "work", "a") as store:
        first, again = store.face_track(compute), store.face_track(compute)
    assert computed == [1]
    np.testing.assert_array_equal(again.affines, first.affines)
    assert again.affine(1) is None and again.affine(0)[1, 2] == 5.0


def test_shard_ranges_cover_every_window_once():
    for windows in (0, 1, 5, 16, 17):
        for count in (1, 2, 3, 7):
            ranges = [Shard(number, count).windows(windows) for number in range(1, count + 1)]
            assert [index for part in ranges for index in part] == list(range(windows))
    assert Shard.parse(" 2/3 ") == Shard(2, 3)
    for text in ("0/3", "4/3", "two/3", "1-3"):
        with pytest.raises(UsageError, match="--shard"):
            Shard.parse(text)


def test_fingerprint_changes_with_settings_and_inputs(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    base = job_fingerprint([video], {"steps": 20}, {"weights": "x"})
    assert base == job_fingerprint([video], {"steps": 20}, {"weights": "x"})
    assert base != job_fingerprint([video], {"steps": 10}, {"weights": "x"})
    video.write_bytes(b"abcd")
    assert base != job_fingerprint([video], {"steps": 20}, {"weights": "x"})


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_with_documented_exit_code_and_run_cleanup(tmp_path, sig, code):
    """The child sleeps for ten minutes: only the signal ends it early, and the exit code says which ended it
    (a sleep that ran out would exit 0). No clock is read, so a loaded machine cannot fail it."""
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from latentsync_cli.errors import Interrupted
        from latentsync_cli.jobs.signals import stop_on_signals
        try:
            with stop_on_signals():
                try:
                    print("ready", flush=True)
                    try:
                        time.sleep(600)
                    except Exception:  # e.g. a loader that reports any failure as a corrupt file
                        sys.exit(99)
                finally:
                    Path({str(marker)!r}).write_text("yes")
        except Interrupted as error:
            sys.exit(int(error.exit_code))
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(sig)
        assert process.wait(timeout=300) == code  # the timeout only catches a hang
    finally:
        if process.poll() is None:
            process.kill()  # this test's own child, by its id
            process.wait()
    assert marker.read_text() == "yes"


def test_source_tree_loads_checkpoints_as_weights_only_and_never_uses_a_shell():
    """Every torch.load passes weights_only=True; no subprocess call passes shell=True."""
    import ast

    source_root = Path(__file__).resolve().parents[1] / "src" / "latentsync_cli"
    torch_loads = 0
    for path in source_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            shell = keywords.get("shell")
            assert not (isinstance(shell, ast.Constant) and shell.value), f"{path}:{node.lineno}: shell=True"
            function = node.func
            is_torch = isinstance(function, ast.Attribute) and getattr(function.value, "id", None) == "torch"
            if is_torch and function.attr == "load":
                torch_loads += 1
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
    assert torch_loads >= 1  # the scan found the loaders


def test_the_job_api_runs_a_job_without_the_cli(tmp_path):
    """What a Ray worker or another program calls: no typer, no rich, warnings and progress by callback."""
    from latentsync_cli.jobs.job import Job
    from latentsync_cli.jobs.models import ModelCache
    from latentsync_cli.jobs.run import run
    from latentsync_cli.media.synthetic import make_face_clip, make_speech
    from latentsync_cli.settings.request import SettingsRequest

    clip = make_face_clip(tmp_path / "clip.mp4", 0.3, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", 0.3, use_espeak=False)
    settings = SettingsRequest(mode="turbo", steps=1, device="cpu")
    job = Job(video=clip, audio=voice, output=tmp_path / "out.mp4", settings=settings, weights="random-tiny")
    warnings, messages = [], []

    class Messages:
        def start(self, task, total): ...
        def advance(self, task, amount=1): ...
        def message(self, text):
            messages.append(text)

    finished = run(job, ModelCache(), Messages(), warn=warnings.append)
    assert finished.prepared.output == tmp_path / "out.mp4" and (tmp_path / "out.mp4").stat().st_size > 0
    assert finished.result.frames > 0 and finished.weights.is_random
    assert any("random weights" in warning for warning in warnings)
    # the face is looked for before the weights load, so that a clip without one fails in seconds
    assert messages[:2] == ["checking for a face", "loading the random-tiny weights"], messages
    assert finished.prepared.speech.dtype == np.float32  # decoded once, in prepare, and handed down


def test_the_job_api_imports_neither_typer_nor_rich():
    code = (
        "import sys; import latentsync_cli.jobs.run, latentsync_cli.jobs.batch, latentsync_cli.jobs.cluster; "
        "import latentsync_cli.pipeline; print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_still_and_a_frozen_video_of_it_give_the_same_frames(tmp_path):
    """A repeated picture is found, aligned and VAE-encoded once, whether it comes as a still image or as
    identical decoded frames of a video: the same computation, so the same output."""
    import imageio_ffmpeg

    from latentsync_cli.bench.fidelity import read_video_frames
    from latentsync_cli.jobs.job import Job
    from latentsync_cli.jobs.models import ModelCache
    from latentsync_cli.jobs.run import run
    from latentsync_cli.media.synthetic import make_speech, make_still_image
    from latentsync_cli.media.video import read_frames
    from latentsync_cli.progress import NoProgress
    from latentsync_cli.settings.request import SettingsRequest

    still = make_still_image(tmp_path / "portrait.png", size=(256, 320))
    frozen = tmp_path / "frozen.mkv"  # lossless RGB: its decoded frames are the PNG's pixels
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-loop", "1", "-i", str(still),
         "-t", "0.6", "-r", "25", "-c:v", "ffv1", "-pix_fmt", "bgr0", str(frozen)],
        check=True,
    )
    first_frames = read_frames(frozen, 3, loop="loop")
    decoded = [frame.copy() for frame in first_frames]
    first_frames.close()
    assert decoded[0] is not decoded[1] and np.array_equal(decoded[0], next(read_frames(still, 1, loop="loop")))

    voice = make_speech(tmp_path / "voice.wav", 0.6, use_espeak=False)
    settings = SettingsRequest(mode="turbo", steps=1, device="cpu", window=8)
    cache, outputs = ModelCache(), []
    for source in (still, frozen):
        output = tmp_path / f"{source.stem}-synced.mp4"
        run(Job(video=source, audio=voice, output=output, settings=settings, weights="random-tiny"), cache, NoProgress())
        outputs.append(read_video_frames(output))
    assert len(outputs[0]) == len(outputs[1]) >= 15  # 0.6 s of speech at 25 fps
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))


def test_the_cpu_lanes_on_a_thread_pool_give_the_same_frames(tmp_path, monkeypatch):
    """Where the machine has cores to spare, frames are decoded ahead and faces cut and pasted on a pool:
    the output must not change."""
    from concurrent.futures import ThreadPoolExecutor

    from latentsync_cli.bench.fidelity import read_video_frames
    from latentsync_cli.jobs.job import Job
    from latentsync_cli.jobs.models import ModelCache
    from latentsync_cli.jobs.run import run
    from latentsync_cli.media.synthetic import make_face_clip, make_speech
    from latentsync_cli.pipeline import lipsync
    from latentsync_cli.progress import NoProgress
    from latentsync_cli.settings.request import SettingsRequest

    pooled_calls = []

    class CountingPool(ThreadPoolExecutor):
        def map(self, function, *iterables, **options):
            pooled_calls.append(function.__name__)
            return super().map(function, *iterables, **options)

    class CountingReadAhead(lipsync.ReadAhead):
        def __init__(self, items, depth):
            pooled_calls.append("read-ahead")
            super().__init__(items, depth)

    monkeypatch.setattr(lipsync, "ThreadPoolExecutor", CountingPool)
    monkeypatch.setattr(lipsync, "ReadAhead", CountingReadAhead)
    clip = make_face_clip(tmp_path / "clip.mp4", 0.6, size=(320, 240), preset="ultrafast")
    voice = make_speech(tmp_path / "voice.wav", 0.6, use_espeak=False)
    settings = SettingsRequest(mode="turbo", steps=1, device="cpu", window=8)
    cache, outputs = ModelCache(), []
    for threads in (1, 3):
        monkeypatch.setattr(lipsync, "paste_thread_count", lambda threads=threads: threads)
        output = tmp_path / f"threads-{threads}.mp4"
        run(Job(video=clip, audio=voice, output=output, settings=settings, weights="random-tiny"), cache, NoProgress())
        outputs.append(read_video_frames(output))
        if threads == 1:
            assert pooled_calls == []  # one thread: no pool at all
    assert {"cut", "paste_crop", "read-ahead"} <= set(pooled_calls)  # both lanes on the pool, decoding ahead
    assert len(outputs[0]) == len(outputs[1]) >= 15
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))


def test_a_cluster_address_that_never_answers_is_given_up_on(monkeypatch):
    """Something listens at the address, but no Ray answers there: Ray would retry for minutes."""
    never = threading.Event()

    class SilentRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **options) -> None:
            never.wait()  # as ray.init does while it retries

    monkeypatch.setattr(cluster, "RAY_CONNECT_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(UsageError, match=f"--ray {address}: no Ray cluster answered within 0.5 s"):
            cluster._connect(SilentRay(), address)
    never.set()  # let the abandoned thread end
    with pytest.raises(UsageError, match="expected auto, local or HOST:PORT"):
        cluster._connect(SilentRay(), "somewhere")


def test_a_named_pipe_is_fingerprinted_by_what_was_read_from_it(tmp_path):
    pipe = tmp_path / "speech.fifo"
    os.mkfifo(pipe)
    before = job_fingerprint([pipe], {}, {"speech_sha256": "abc"})
    os.utime(pipe, (time.time() - 60, time.time() - 60))  # written again: a pipe's mtime moves
    assert job_fingerprint([pipe], {}, {"speech_sha256": "abc"}) == before
    assert job_fingerprint([pipe], {}, {"speech_sha256": "def"}) != before


def test_a_named_pipe_is_refused_as_speech_for_a_ray_job(tmp_path):
    from latentsync_cli.jobs.run import Job

    pipe = tmp_path / "speech.wav"
    os.mkfifo(pipe)
    job = Job(video=tmp_path / "clip.mp4", audio=pipe, output=tmp_path / "out.mp4")
    planned = cluster.plan_job(1, job, cluster.ClusterOptions(), workers=2)  # never opens the pipe
    assert planned.record.status == "failed" and planned.record.exit_code == ExitCode.BAD_INPUT
    assert "speech.wav: a named pipe cannot be read by every worker" in planned.record.error


# --- plates: sequences and stdout as outputs ------------------------------------------------------


def test_default_outputs_keep_a_plates_container_or_sequence(tmp_path):
    from latentsync_cli.jobs.outputs import default_output_path

    assert default_output_path(tmp_path / "talk.mp4") == tmp_path / "talk_synced.mp4"
    assert default_output_path(tmp_path / "talk.webm") == tmp_path / "talk_synced.mp4"
    assert default_output_path(tmp_path / "plate.MOV") == tmp_path / "plate_synced.mov"
    assert default_output_path(tmp_path / "plate.mxf") == tmp_path / "plate_synced.mxf"
    (tmp_path / "shot").mkdir()
    for number in (1001, 1002):
        (tmp_path / "shot" / f"shot.{number}.exr").write_bytes(b"")
    expected = tmp_path / "shot_synced" / "shot.%04d.exr"
    assert default_output_path(tmp_path / "shot") == default_output_path(tmp_path / "shot" / "shot.%04d.exr") == expected


def test_a_sequence_folder_is_replaced_only_when_it_holds_that_sequence(tmp_path):
    from latentsync_cli.jobs.outputs import output_exists

    pattern = tmp_path / "out" / "f_%04d.png"
    assert check_output_path(pattern, [], overwrite=False) == pattern and not output_exists(pattern)
    pattern.parent.mkdir()
    assert check_output_path(pattern, [], overwrite=False) == pattern  # an empty folder is fine
    (pattern.parent / "f_0001.png").write_bytes(b"x")
    (pattern.parent / "f.wav").write_bytes(b"x")
    assert output_exists(pattern)
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_path(pattern, [], overwrite=False)
    assert check_output_path(pattern, [], overwrite=True) == pattern
    (pattern.parent / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds notes.txt, which is not part of f_%04d.png"):
        check_output_path(pattern, [], overwrite=True)


def test_stdout_is_an_output_and_unknown_names_are_refused(tmp_path):
    from latentsync_cli.media.outputs import STDOUT

    assert check_output_path(STDOUT, [], overwrite=False) == STDOUT
    with pytest.raises(OutputError, match="must be one of .mp4, .mov, .mxf, .mkv"):
        check_output_path(tmp_path / "out.avi", [], overwrite=False)
