"""Write the run's proxy into the package: fp16 safetensors and the manifest weights/proxy.py checks.

    unet.safetensors   the UNet's EMA weights
    vae.safetensors    the VAE, its latent space rescaled (train/vae.py)
    proxy.json         resolution, both configs, the audio encoder's seed and digest, the recipes, what the
                       training cost, and the held-out table when the run has one

`unpack_shipped` goes the other way: the shipped files as a finished run folder, for a
measurement or a fine-tune (`--init-from`) when the run that made them is not at hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentsync_cli.train.data import audio_stem_gain, load_clips
from latentsync_cli.train.loop import USAGE_FILE, Stage
from latentsync_cli.train.run import RECIPE_FILE, stage_recipe, trained_unet_weights
from latentsync_cli.train.unet import UnetRecipe, build_unet
from latentsync_cli.train.vae import FINAL_FILE, SCALE_FILE, VaeRecipe, cache_latents, load_trained_vae
from latentsync_cli.weights.proxy import (
    AUDIO_ENCODER_SEED,
    MANIFEST_FORMAT,
    PROXY_RESOLUTION,
    proxy_unet_config,
    proxy_vae_config,
    read_manifest,
)
from latentsync_cli.weights.proxy_files import MANIFEST_FILE, PROXY_CAVEAT, PROXY_DIR, UNET_FILE, VAE_FILE

MAX_SHIPPED_BYTES = 25 * 2**20


def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}


def usage(folder: Path) -> dict:
    """Steps, wall and CPU seconds of every chunk of a stage (a killed chunk's up to its last checkpoint)."""
    lines = [json.loads(line) for line in (folder / "usage.jsonl").read_text().splitlines() if line.strip()]
    return {"chunks": len(lines), "wall_s": round(sum(line["wall_s"] for line in lines), 1),
            "cpu_s": round(sum(line["cpu_s"] for line in lines), 1), "threads": sorted({line["threads"] for line in lines})}


def shipped_clip_info(value):
    """A clip's entry as shipped: the video by its file name, not this machine's path."""
    if isinstance(value, dict) and "video" in value:
        return {**value, "video": Path(value["video"]).name}
    return value


def stage_training(out: Path, stage: str) -> dict:
    """A stage's recipe and cost; a fine-tune carries the run it started from, whose cost is part of its own."""
    recipe = json.loads((out / stage / RECIPE_FILE).read_text())
    entry = {"recipe": recipe, **usage(out / stage)}
    if recipe.get("init_from"):
        entry["init"] = stage_training(Path(recipe["init_from"]), stage)
        recipe["init_from"] = Path(recipe["init_from"]).name  # the run folder's name, not this machine's path
    return entry


def export_run(out: Path, package_dir: Path | None = None, log=print) -> Path:
    folder = package_dir or PROXY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    save_file(half(trained_unet_weights(out)), folder / UNET_FILE)
    save_file(half(load_trained_vae(proxy_vae_config(), out / "vae").state_dict()), folder / VAE_FILE)
    data_info = json.loads((out / "data" / "info.json").read_text())
    manifest = {
        "format": MANIFEST_FORMAT,
        "what": PROXY_CAVEAT,
        "resolution": PROXY_RESOLUTION,
        "unet_config": json.loads(json.dumps(asdict(proxy_unet_config()))),
        "vae_config": proxy_vae_config(),
        "vae_latent_space": json.loads((out / "vae" / SCALE_FILE).read_text()),
        "audio_encoder": {"architecture": "whisper-tiny encoder, random weights", "seed": AUDIO_ENCODER_SEED,
                          "stem_gain": audio_stem_gain(data_info), "sha256": data_info["audio_encoder"],
                          "torch": torch.__version__},
        "data": data_info,
        "training": {stage: stage_training(out, stage) for stage in ("vae", "unet")},
    }
    manifest["data"] = {key: shipped_clip_info(value) for key, value in data_info.items() if not key.startswith("audio_")}
    heldout = out / "eval" / "heldout.json"
    if heldout.is_file():
        manifest["heldout"] = json.loads(heldout.read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    for name in (UNET_FILE, VAE_FILE, MANIFEST_FILE):
        (folder / name).chmod(0o644)  # safetensors writes 0600: an install for several users must read them
    size = sum((folder / name).stat().st_size for name in (UNET_FILE, VAE_FILE, MANIFEST_FILE))
    if size > MAX_SHIPPED_BYTES:
        raise SystemExit(f"the proxy's files take {size / 2**20:.1f} MB, more than the {MAX_SHIPPED_BYTES >> 20} MB allowed")
    log(f"wrote {folder} ({size / 2**20:.1f} MB)")
    return folder


def unpack_shipped(out: Path, package_dir: Path | None = None, log=print) -> None:
    """The shipped proxy as a finished run in `out` (whose data/ `prepare` has written): vae/ with the
    shipped VAE in float32 and the latents it caches, unet/ with a checkpoint whose EMA weights are the
    shipped UNet's; both with the manifest's recipes and costs. The fp16 rounding stays in the weights."""
    folder = package_dir or PROXY_DIR
    manifest = read_manifest(folder)
    stages = {"vae": VaeRecipe, "unet": UnetRecipe}
    for stage, recipe_type in stages.items():
        if (out / stage).exists():
            raise SystemExit(f"{out / stage} exists: unpack into a run folder that has only data/")
        shipped = manifest["training"][stage]
        names = {field.name for field in fields(recipe_type)}
        known = {name: value for name, value in shipped["recipe"].items() if name in names}
        stage_recipe(out / stage, recipe_type, {**known, "init_from": ""} if stage == "unet" else known)
        chunk = {"from_step": 0, "to_step": shipped["recipe"]["steps"], "wall_s": shipped["wall_s"],
                 "cpu_s": shipped["cpu_s"], "threads": shipped["threads"][0]}
        (out / stage / USAGE_FILE).write_text(json.dumps(chunk) + "\n")
    save_file({k: v.float().contiguous() for k, v in load_file(folder / VAE_FILE).items()}, out / "vae" / FINAL_FILE)
    (out / "vae" / SCALE_FILE).write_text(json.dumps(manifest["vae_latent_space"], indent=2))
    cache_latents(load_trained_vae(proxy_vae_config(), out / "vae"), load_clips(out), out / "latents")
    recipe = stage_recipe(out / "unet", UnetRecipe, {})
    unet = build_unet(proxy_unet_config(), recipe.seed)
    unet.load_state_dict({k: v.float() for k, v in load_file(folder / UNET_FILE).items()})
    stage = Stage(out / "unet", unet, recipe.schedule(), recipe.seed, ema_decay=recipe.ema_decay)
    stage.step = recipe.steps
    stage.save()
    log(f"{out}: the shipped proxy as a finished run (VAE, cached latents, UNet)")
