"""The proxy's training code on micro configurations (seconds): a resumed run equals an uninterrupted one.

CI never trains the proxy; these check the machinery scripts/train_proxy.py runs.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync_cli.models.unet_config import UNetConfig
from latentsync_cli.models.vae import tiny_vae_config
from latentsync_cli.train.loop import LOG_FILE, ChunkSettings, Schedule, Stage, one_step, train_chunk
from latentsync_cli.train.unet import ClipLatents, LatentWindows, UnetRecipe, build_unet, unet_step_function
from latentsync_cli.train.vae import VaeRecipe, build_vae, posterior, rescale_latent_space, vae_step_function

SOURCE = Path(__file__).resolve().parents[1] / "src" / "latentsync_cli"

MICRO_UNET = UNetConfig(
    block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    layers_per_block=1,
    attention_heads=2,
    motion_heads=2,
    cross_attention_dim=16,
    sample_size=8,
)
MICRO_RECIPE = UnetRecipe(steps=4, window=4, warmup_steps=2, audio_drop=0.5, seed=5)


class Interrupt(Exception):
    """Stands in for a kill between two checkpoints."""


def micro_windows(window: int = 4) -> LatentWindows:
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(shape, generator=generator)

    clips = [
        ClipLatents(draw(n, 4, 8, 8), draw(n, 4, 8, 8).abs() * 0.1, draw(n, 4, 8, 8), draw(n, 4, 8, 8).abs() * 0.1,
                    draw(n, 5, 16))
        for n in (20, 30)
    ]
    return LatentWindows(clips, window)


def unet_stage(folder: Path) -> Stage:
    unet = build_unet(MICRO_UNET, MICRO_RECIPE.seed)
    return Stage(folder, unet, MICRO_RECIPE.schedule(), MICRO_RECIPE.seed, ema_decay=MICRO_RECIPE.ema_decay)


def interrupted_after(step_fn, calls: int):
    """step_fn that raises on its `calls + 1`-th call (the step in progress is lost, as with a kill)."""
    count = {"calls": 0}

    def step(model, generator):
        count["calls"] += 1
        if count["calls"] > calls:
            raise Interrupt
        return step_fn(model, generator)

    return step


def assert_same_state(first: Stage, second: Stage) -> None:
    assert first.step == second.step
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    if first.ema is not None:
        for key, value in first.ema.items():
            assert torch.equal(value, second.ema[key]), key
    moments = [s.optimizer.state_dict()["state"] for s in (first, second)]
    for index, state in moments[0].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(moments[1][index][name])), (index, name)
    assert torch.equal(first.generator.get_state(), second.generator.get_state())


def quiet(text: str) -> None:
    pass


def test_a_killed_and_resumed_unet_run_equals_an_uninterrupted_one(tmp_path):
    windows = micro_windows()
    settings = dict(checkpoint_every=2, log_every=1)

    straight = unet_stage(tmp_path / "straight")
    train_chunk(straight, unet_step_function(windows, MICRO_RECIPE), ChunkSettings(steps=10, **settings), quiet)
    assert straight.done and straight.step == 4

    # First chunk: killed during step 4, after the checkpoint of step 2 (step 3 is lost work).
    first = unet_stage(tmp_path / "resumed")
    with pytest.raises(Interrupt):
        step = interrupted_after(unet_step_function(windows, MICRO_RECIPE), calls=3)
        train_chunk(first, step, ChunkSettings(steps=10, **settings), quiet)
    # Second chunk: a new process, new objects, resumed from step 2; then a third to finish.
    second = unet_stage(tmp_path / "resumed")
    assert train_chunk(second, unet_step_function(windows, MICRO_RECIPE), ChunkSettings(steps=1, **settings), quiet) == 1
    third = unet_stage(tmp_path / "resumed")
    assert train_chunk(third, unet_step_function(windows, MICRO_RECIPE), ChunkSettings(steps=10, **settings), quiet) == 1

    assert_same_state(straight, third)
    steps_logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / LOG_FILE).read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4]  # the lost step's line was dropped on resume, then written again
    # the same losses (the lines' times differ)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / LOG_FILE).read_text().splitlines()]
              for run in ("straight", "resumed")]
    assert losses[0] == losses[1]


def test_a_resumed_vae_run_equals_an_uninterrupted_one(tmp_path):
    config = {**tiny_vae_config(), "sample_size": 32}
    faces = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    recipe = VaeRecipe(steps=3, batch=2, warmup_steps=1, seed=3)

    def stage(name: str) -> Stage:
        return Stage(tmp_path / name, build_vae(config, recipe.seed), recipe.schedule(), recipe.seed)

    straight = stage("straight")
    train_chunk(straight, vae_step_function(faces, recipe), ChunkSettings(steps=3), quiet)
    for _ in range(3):  # one step per chunk
        resumed = stage("resumed")
        train_chunk(resumed, vae_step_function(faces, recipe), ChunkSettings(steps=1), quiet)
    assert_same_state(straight, resumed)


def test_the_chunk_writes_its_pid_and_removes_it(tmp_path):
    pid_file = tmp_path / "train.pid"
    seen = []

    def step(model, generator):
        seen.append(pid_file.read_text().strip())
        loss = sum(p.sum() for p in model.parameters()) * 0.0
        loss.backward()
        return {"loss": 0.0}

    model = torch.nn.Linear(2, 2)
    stage = Stage(tmp_path / "stage", model, Schedule(1e-3, total_steps=2, warmup_steps=0), seed=0)
    train_chunk(stage, step, ChunkSettings(steps=5, pid_file=pid_file), quiet)
    assert seen and set(seen) == {str(__import__("os").getpid())}
    assert not pid_file.exists()
    usage = json.loads((tmp_path / "stage" / "usage.jsonl").read_text())
    assert usage["from_step"] == 0 and usage["to_step"] == 2 and usage["threads"] == torch.get_num_threads()


KILLED_CHUNK = """
import sys, threading
from pathlib import Path
import torch
from latentsync_cli.train.loop import ChunkSettings, Schedule, Stage, train_chunk

release = threading.Event()

def step(model, generator):
    if stage.step == 4:  # after the checkpoint of step 4: wait here to be killed
        release.wait()
    loss = model(torch.ones(1, 2)).sum()
    loss.backward()
    return {"loss": float(loss)}

stage = Stage(Path(sys.argv[1]), torch.nn.Linear(2, 2), Schedule(1e-3, total_steps=10, warmup_steps=0), seed=0)
train_chunk(stage, step, ChunkSettings(steps=10, checkpoint_every=2), lambda line: None)
"""


def test_a_chunk_killed_outright_still_counts_its_work_to_the_last_checkpoint(tmp_path):
    """SIGKILL runs no finally: the chunk's usage line is written at every checkpoint, not only at its end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    usage_file = tmp_path / "stage" / "usage.jsonl"
    chunk = subprocess.Popen([sys.executable, "-c", KILLED_CHUNK, str(tmp_path / "stage")])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and chunk.poll() is None:
            if usage_file.is_file() and json.loads(usage_file.read_text().splitlines()[-1])["to_step"] == 4:
                break
            time.sleep(0.1)
    finally:
        os.kill(chunk.pid, signal.SIGKILL)
        chunk.wait()
    lines = [json.loads(line) for line in usage_file.read_text().splitlines()]
    assert len(lines) == 1  # one line per chunk, rewritten in place
    assert lines[0]["from_step"] == 0 and lines[0]["to_step"] == 4 and lines[0]["cpu_s"] >= 0


def test_reference_windows_never_share_a_frame_with_their_window():
    windows = micro_windows(window=4)
    generator = torch.Generator().manual_seed(1)
    seen_clips = set()
    for _ in range(500):
        clip, start, reference = windows.draw_starts(generator)
        seen_clips.add(clip)
        count = windows.starts[clip]
        assert 0 <= start < count and 0 <= reference < count
        assert abs(reference - start) >= windows.window
    assert seen_clips == {0, 1}


def frame_numbered_windows(window: int, visible_jitter: int) -> LatentWindows:
    """Clips whose every latent holds its frame's number (and whose posteriors have no spread)."""
    def numbered(n: int) -> torch.Tensor:
        return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 4, 8, 8).clone()

    clips = [ClipLatents(numbered(n), torch.zeros(n, 4, 8, 8), numbered(n), torch.zeros(n, 4, 8, 8),
                         torch.zeros(n, 5, 16)) for n in (20, 30)]
    return LatentWindows(clips, window, visible_jitter)


@pytest.mark.parametrize("jitter", [0, 2])
def test_the_visible_face_comes_from_within_the_jitter_of_its_frame(jitter):
    windows = frame_numbered_windows(window=4, visible_jitter=jitter)
    generator = torch.Generator().manual_seed(3)
    offsets = []
    for _ in range(200):
        window = windows.sample(generator)
        frames, visible = window.latents[0, 0, :, 0, 0], window.masked[0, 0, :, 0, 0]
        offsets += (visible - frames).tolist()
    assert set(offsets) <= set(range(-jitter, jitter + 1))
    if jitter:  # every offset occurs (near the clip's ends they are clamped inside it)
        assert set(offsets) == set(range(-jitter, jitter + 1))


def test_the_schedule_warms_up_holds_and_decays():
    schedule = Schedule(1.0, total_steps=100, warmup_steps=10, decay_fraction=0.2, final_fraction=0.1)
    assert schedule.learning_rate_at(0) == pytest.approx(0.1)
    assert schedule.learning_rate_at(50) == 1.0
    assert schedule.learning_rate_at(80) == 1.0
    assert schedule.learning_rate_at(99) == pytest.approx(0.1 + 0.9 * (1 - 19 / 20))


def test_rescaling_the_latent_space_keeps_the_reconstructions():
    config = {**tiny_vae_config(), "sample_size": 32}
    vae = build_vae(config, seed=0).eval()
    pixels = torch.rand((2, 3, 32, 32)) * 2 - 1
    with torch.no_grad():
        before_mean, before_std = posterior(vae, pixels)
        before = vae.decode(before_mean).sample
        rescale_latent_space(vae, 3.5)
        after_mean, after_std = posterior(vae, pixels)
        after = vae.decode(after_mean).sample
    torch.testing.assert_close(after_mean, before_mean * 3.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after_std, before_std * 3.5, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_nothing_in_the_product_imports_the_training_code():
    offenders = []
    for path in SOURCE.rglob("*.py"):
        if "train" in path.relative_to(SOURCE).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("latentsync_cli.train")]
    assert offenders == []


def test_a_recipe_written_before_a_field_existed_reads_with_its_default(tmp_path):
    from dataclasses import asdict

    from latentsync_cli.train.run import RECIPE_FILE, stage_recipe

    older = {key: value for key, value in asdict(UnetRecipe(steps=7)).items() if key != "init_from"}
    (tmp_path / RECIPE_FILE).write_text(json.dumps(older))
    recipe = stage_recipe(tmp_path, UnetRecipe, {})
    assert recipe.steps == 7 and recipe.init_from == ""
    with pytest.raises(SystemExit, match="init_from"):  # a run's recipe is fixed by its first chunk
        stage_recipe(tmp_path, UnetRecipe, {"init_from": "/elsewhere"})


def test_the_x0_weighting_scales_each_step_by_its_noise_level():
    from dataclasses import replace

    from latentsync_cli.optimizers.schedulers import make_scheduler

    alphas_cumprod = make_scheduler("ddim", 20).alphas_cumprod.float()
    windows = micro_windows()
    for seed in (5, 9, 14):  # timesteps 95 (weight 1), 755 (about 15) and 918 (the cap)
        gradients, drawn = [], []
        for recipe in (replace(MICRO_RECIPE, seed=seed), replace(MICRO_RECIPE, seed=seed, x0_weight_cap=20.0)):
            unet = build_unet(MICRO_UNET, 0)
            losses = unet_step_function(windows, recipe)(unet, torch.Generator().manual_seed(seed))
            gradients.append(unet.conv_in.weight.grad.clone())
            drawn.append(losses)
        assert drawn[0] == drawn[1]  # the same window, timestep and loss: only the step's weight differs
        alpha = alphas_cumprod[int(drawn[0]["t"])]
        expected = float(((1 - alpha) / alpha).clamp(1.0, 20.0))
        scaled = gradients[0] * expected
        assert float((gradients[1] - scaled).norm() / scaled.norm()) < 1e-5


def test_recipe_fields_are_set_from_the_command_line_with_their_types():
    from latentsync_cli.train.run import recipe_overrides

    overrides = recipe_overrides(UnetRecipe, ["x0_weight_cap=20", "warmup_steps=10", "init_from=/runs/a"])
    assert overrides == {"x0_weight_cap": 20.0, "warmup_steps": 10, "init_from": "/runs/a"}
    assert isinstance(overrides["warmup_steps"], int)
    with pytest.raises(ValueError, match="FIELD one of"):
        recipe_overrides(VaeRecipe, ["x0_weight_cap=20"])
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        recipe_overrides(UnetRecipe, ["steps"])


def test_an_unknown_clip_stops_the_unet_stage_before_it_writes_its_recipe(tmp_path):
    from latentsync_cli.train.run import clip_names, unet_chunk
    from latentsync_cli.train.vae import FINAL_FILE

    assert clip_names("") is None and clip_names("demo2,demo3") == ("demo2", "demo3")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / FINAL_FILE).write_bytes(b"")
    with pytest.raises(SystemExit, match="clips=demo9: each clip is one of demo1"):
        unet_chunk(tmp_path, 1, {"clips": "demo9"}, quiet)
    assert not (tmp_path / "unet").exists()


def test_logvar_init_starts_every_latent_channel_narrow():
    config = {**tiny_vae_config(), "sample_size": 32}
    pixels = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    widths = {}
    for logvar_init in (0.0, -6.0):
        vae = build_vae(config, seed=0, logvar_init=logvar_init).eval()
        with torch.no_grad():
            widths[logvar_init] = vae.encode(pixels).latent_dist.std.mean(dim=(0, 2, 3))  # per channel
    assert (widths[0.0] > 0.5).all()  # PyTorch's default: as wide as the prior
    assert (widths[-6.0] < 0.2).all()
    same = build_vae(config, seed=0, logvar_init=-6.0).state_dict()
    default = build_vae(config, seed=0).state_dict()
    assert [key for key in same if not torch.equal(same[key], default[key])] == ["quant_conv.bias"]


def test_training_data_aligns_the_faces_as_sync_does(media_dir):
    """`train_proxy.py prepare`'s face path, on the first frames of a demo clip (it once fell behind FaceLocator)."""
    from latentsync_cli.train.data import align_faces

    faces, has_face = align_faces(media_dir / "demo1_video.mp4", 3, 128)
    assert faces.shape == (3, 128, 128, 3) and faces.dtype == np.uint8
    assert has_face.all()
    assert faces.std() > 20  # a face, not the grey that stands for a frame without one


MICRO_SYNCNET = dict(frames=3, latent_rows=4, latent_size=8, audio_tokens=5, audio_dim=16, width=16, embedding=16)


def test_the_syncnet_learns_which_speech_goes_with_which_mouth():
    """Audio rows made from the mouth's own latents: a few hundred steps must tell them from shifted rows."""
    from latentsync_cli.train.syncnet import (
        SyncNetConfig,
        SyncRecipe,
        build_syncnet,
        evaluate_syncnet,
        sync_step_function,
    )

    config = SyncNetConfig(**MICRO_SYNCNET)
    syncnet = build_syncnet(0, config)
    windows = micro_windows()
    speaking = torch.randn((4 * 4 * 8, 5 * 16), generator=torch.Generator().manual_seed(1))
    for clip in windows.clips:  # each frame's rows: a fixed linear map of the mouth latents the net sees
        clip.audio = ((clip.face_mean[:, :, 4:, :] * syncnet.generated).flatten(1) @ speaking).reshape(-1, 5, 16)
    recipe = SyncRecipe(steps=150, batch=16, warmup_steps=10, min_shift=2)
    before = evaluate_syncnet(syncnet.eval(), windows.clips, recipe.min_shift)["own_beats_shifted"]
    stage = Stage(Path("unused"), syncnet.train(), recipe.schedule(), recipe.seed)
    step = sync_step_function(windows.clips, recipe, config)
    for _ in range(recipe.steps):
        one_step(stage, step, grad_clip=1.0)
    after = evaluate_syncnet(syncnet.eval(), windows.clips, recipe.min_shift)["own_beats_shifted"]
    assert after > 0.9 and after > before + 0.2, (before, after)


def test_the_sync_loss_reaches_the_unet_and_leaves_the_syncnet_frozen():
    from dataclasses import replace

    from latentsync_cli.train.syncnet import SyncNetConfig, build_syncnet

    syncnet = build_syncnet(0, SyncNetConfig(**MICRO_SYNCNET)).eval().requires_grad_(False)
    windows = micro_windows()
    gradients = {}
    for weight in (0.0, 1.0):
        recipe = replace(MICRO_RECIPE, audio_drop=0.0, sync_weight=weight)
        unet = build_unet(MICRO_UNET, 0)
        losses = unet_step_function(windows, recipe, syncnet)(unet, torch.Generator().manual_seed(3))
        gradients[weight] = unet.conv_out.weight.grad.clone()
        assert np.isfinite(losses["sync_loss"]) == (weight > 0)
    assert not torch.allclose(gradients[0.0], gradients[1.0])
    assert all(parameter.grad is None for parameter in syncnet.parameters())


def test_the_shipped_proxy_unpacks_into_a_finished_run(tmp_path):
    """`train_proxy.py unpack`: the package's files as a run that `--init-from` and the measurements read."""
    from safetensors.torch import load_file

    from latentsync_cli.train.data import DEMO_CLIPS
    from latentsync_cli.train.export import unpack_shipped
    from latentsync_cli.train.run import trained_unet_weights
    from latentsync_cli.weights.proxy import PROXY_RESOLUTION
    from latentsync_cli.weights.proxy_files import PROXY_DIR, UNET_FILE

    (tmp_path / "data").mkdir()
    faces = np.random.default_rng(0).integers(0, 256, (4, PROXY_RESOLUTION, PROXY_RESOLUTION, 3), dtype=np.uint8)
    for name in DEMO_CLIPS:
        np.savez(tmp_path / "data" / f"{name}.npz", faces=faces, has_face=np.ones(4, bool),
                 audio=np.zeros((4, 50, 384), np.float32), train_frames=3)
    unpack_shipped(tmp_path, log=quiet)

    shipped = load_file(PROXY_DIR / UNET_FILE)
    unpacked = trained_unet_weights(tmp_path)
    assert all(torch.equal(unpacked[key], value.float()) for key, value in shipped.items())
    with np.load(tmp_path / "latents" / "demo1.npz") as latents:
        assert latents["face_mean"].shape == (4, 4, PROXY_RESOLUTION // 8, PROXY_RESOLUTION // 8)
    with pytest.raises(SystemExit, match="exists"):  # never over a run's own stages
        unpack_shipped(tmp_path, log=quiet)
