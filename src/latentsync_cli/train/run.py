"""The stages of a proxy training run, each in its own folder of the run folder:

    <out>/data/       prepare: aligned faces and audio features of each demo clip
    <out>/vae/        vae: checkpoint, log; when done, vae.safetensors (latent space rescaled)
    <out>/latents/    the cached VAE posteriors of every frame (written when the VAE is done)
    <out>/syncnet/    syncnet: checkpoint, log; when done, syncnet.safetensors and heldout.json
    <out>/unet/       unet: checkpoint (with EMA weights), log
    <out>/eval/       evaluate: the held-out table (JSON and Markdown)
    <out>/train.pid   the process id of the running chunk

A stage's recipe is written to <stage>/recipe.json by its first chunk and read
back by the others, so every chunk of a run trains with the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentsync_cli.train import syncnet as sync
from latentsync_cli.train.data import DEMO_CLIPS, load_clips
from latentsync_cli.train.loop import CHECKPOINT_FILE, ChunkSettings, Stage, train_chunk
from latentsync_cli.train.unet import LatentWindows, UnetRecipe, build_unet, load_clip_latents, unet_step_function
from latentsync_cli.train.vae import (
    FINAL_FILE,
    VaeRecipe,
    build_vae,
    cache_latents,
    finish_vae,
    load_trained_vae,
    training_faces,
    vae_step_function,
)
from latentsync_cli.weights.proxy import proxy_unet_config, proxy_vae_config

RECIPE_FILE = "recipe.json"
PID_FILE = "train.pid"


def stage_recipe(folder: Path, recipe_type, overrides: dict):
    """The stage's recipe: the one its first chunk wrote, else the defaults with `overrides`, written now."""
    path = folder / RECIPE_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = {key: value for key, value in overrides.items() if value is not None and stored.get(key) != value}
        if changed:
            raise SystemExit(f"{path} was written by this run's first chunk; {sorted(changed)} cannot change now")
        # a field added after the run began keeps its default
        return recipe_type(**{f.name: stored[f.name] for f in fields(recipe_type) if f.name in stored})
    recipe = recipe_type(**{key: value for key, value in overrides.items() if value is not None})
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe.to_dict(), indent=2))
    return recipe


def recipe_overrides(recipe_type, assignments: list[str]) -> dict:
    """{field: value} from "field=value" strings, each value read as the type of the field's default."""
    defaults = recipe_type()
    overrides = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator or name not in {f.name for f in fields(recipe_type)}:
            names = ", ".join(f.name for f in fields(recipe_type))
            raise ValueError(f"--recipe {assignment!r}: expected FIELD=VALUE, FIELD one of {names}")
        overrides[name] = type(getattr(defaults, name))(text)
    return overrides


def vae_chunk(out: Path, steps: int, overrides: dict, log=print) -> bool:
    """Train the VAE for up to `steps` more steps; when its last step is done, rescale it and cache the latents.
    Returns True when the VAE is finished."""
    folder = out / "vae"
    if (folder / FINAL_FILE).is_file():
        return True
    recipe = stage_recipe(folder, VaeRecipe, overrides)
    clips = load_clips(out)
    vae = build_vae(proxy_vae_config(), recipe.seed, recipe.logvar_init)
    stage = Stage(folder, vae, recipe.schedule(), recipe.seed)
    settings = ChunkSettings(steps=steps, checkpoint_every=50, log_every=10, pid_file=out / PID_FILE)
    train_chunk(stage, vae_step_function(training_faces(clips), recipe), settings, log)
    if not stage.done:
        return False
    finish_vae(vae, clips, folder)
    cache_latents(load_trained_vae(proxy_vae_config(), folder), clips, out / "latents")
    log(f"VAE finished; latents cached in {out / 'latents'}")
    return True


def syncnet_chunk(out: Path, steps: int, overrides: dict, log=print) -> bool:
    """Train the latent SyncNet for up to `steps` more steps; when done, save it and score the held-out frames.
    Returns True when it is finished."""
    require_vae(out)
    folder = out / "syncnet"
    if (folder / sync.FINAL_FILE).is_file():
        return True
    recipe = stage_recipe(folder, sync.SyncRecipe, overrides)
    syncnet = sync.build_syncnet(recipe.seed)
    stage = Stage(folder, syncnet, recipe.schedule(), recipe.seed)
    settings = ChunkSettings(steps=steps, checkpoint_every=100, log_every=25, pid_file=out / PID_FILE)
    train_chunk(stage, sync.sync_step_function(load_clip_latents(out), recipe), settings, log)
    if not stage.done:
        return False
    save_file({k: v.contiguous() for k, v in syncnet.state_dict().items()}, folder / sync.FINAL_FILE)
    scores = {part: sync.evaluate_syncnet(syncnet.eval(), load_clip_latents(out, held_out=part == "held_out"),
                                          recipe.min_shift) for part in ("training", "held_out")}
    (folder / "heldout.json").write_text(json.dumps(scores, indent=2))
    log(f"SyncNet finished: {json.dumps(scores)}")
    return True


def require_vae(out: Path) -> None:
    if not (out / "vae" / FINAL_FILE).is_file():
        raise SystemExit(f"the VAE of {out} is not finished: run the `vae` stage first")


def clip_names(text: str) -> tuple[str, ...] | None:
    """UnetRecipe.clips as names ("": None, every clip); an unknown name stops the run with one line."""
    if not text:
        return None
    names = tuple(text.split(","))
    if not set(names) <= set(DEMO_CLIPS):
        raise SystemExit(f"--recipe clips={text}: each clip is one of {','.join(DEMO_CLIPS)}")
    return names


def unet_chunk(out: Path, steps: int, overrides: dict, log=print) -> bool:
    """Train the UNet for up to `steps` more steps; returns True when it is finished."""
    require_vae(out)
    clip_names(overrides.get("clips") or "")  # before the first chunk writes the recipe
    folder = out / "unet"
    recipe = stage_recipe(folder, UnetRecipe, overrides)
    syncnet = None
    if recipe.sync_weight > 0:
        if not (out / "syncnet" / sync.FINAL_FILE).is_file():
            raise SystemExit(f"the SyncNet of {out} is not finished: run the `syncnet` stage first")
        syncnet = sync.load_trained_syncnet(out / "syncnet")
    windows = LatentWindows.load(out, recipe.window, clip_names(recipe.clips), visible_jitter=recipe.visible_jitter)
    unet = build_unet(proxy_unet_config(), recipe.seed)
    if recipe.init_from and not (folder / CHECKPOINT_FILE).is_file():  # a fine-tune's first chunk
        unet.load_state_dict(trained_unet_weights(Path(recipe.init_from)))
    stage = Stage(folder, unet, recipe.schedule(), recipe.seed, ema_decay=recipe.ema_decay)
    settings = ChunkSettings(steps=steps, checkpoint_every=25, log_every=10, pid_file=out / PID_FILE)
    train_chunk(stage, unet_step_function(windows, recipe, syncnet), settings, log)
    return stage.done


def trained_unet_weights(out: Path) -> dict[str, torch.Tensor]:
    """The UNet's EMA weights from the run's last checkpoint."""
    recipe = stage_recipe(out / "unet", UnetRecipe, {})
    stage = Stage(out / "unet", build_unet(proxy_unet_config(), recipe.seed), recipe.schedule(), recipe.seed,
                  ema_decay=recipe.ema_decay)
    if not stage.restore():
        raise SystemExit(f"{out / 'unet'} has no checkpoint yet: run the `unet` stage first")
    return stage.averaged_weights()
