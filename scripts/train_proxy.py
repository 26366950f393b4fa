#!/usr/bin/env python3
"""Train the proxy model (`--weights proxy`) on the three demo clips, on the CPU, in resumable chunks.

    python3 scripts/train_proxy.py prepare  --out /work/proxy-run          # faces + audio features (minutes)
    python3 scripts/train_proxy.py vae      --out /work/proxy-run --steps 300   # one chunk; run again to go on
    python3 scripts/train_proxy.py syncnet  --out /work/proxy-run --steps 500   # only for --recipe sync_weight=...
    python3 scripts/train_proxy.py unet     --out /work/proxy-run --steps 300
    python3 scripts/train_proxy.py audio    --out /work/proxy-run2         # recompute the audio rows only
    python3 scripts/train_proxy.py unet     --out /work/proxy-run2 --init-from /work/proxy-run   # fine-tune
    python3 scripts/train_proxy.py unet     --out /work/proxy-run3 --init-from /work/proxy-run2 \
            --recipe x0_weight_cap=20 --recipe ema_decay=0.99 --total-steps 350     # another recipe
    python3 scripts/train_proxy.py evaluate --out /work/proxy-run          # the held-out table
    python3 scripts/train_proxy.py export   --out /work/proxy-run          # -> src/latentsync_cli/weights/proxy_weights/
    python3 scripts/train_proxy.py unpack   --out /work/shipped            # after prepare: the shipped proxy as a run
    python3 scripts/train_proxy.py curves   --out /work/proxy-run          # <out>/loss_curves.png from the logs

A chunk runs --steps steps (not a time) from the stage's last checkpoint and
exits; a killed chunk loses at most the steps since its last checkpoint. Run it
the way it was trained: `nice -n 19`, OMP_WAIT_POLICY=PASSIVE, --threads 2 (the
thread count is part of what makes a run reproducible). The chunk's process id
is in <out>/train.pid. All of it: latentsync_cli.train.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT.parent / "shared" / "media"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = ("prepare", "audio", "vae", "syncnet", "unet", "evaluate", "export", "unpack", "curves")
    parser.add_argument("stage", choices=stages)
    parser.add_argument("--out", type=Path, required=True, help="the run folder (outside the repository)")
    parser.add_argument("--steps", type=int, default=200, help="vae, syncnet, unet: steps this chunk runs at most")
    parser.add_argument("--total-steps", type=int,
                        help="vae, syncnet, unet: the stage's total steps (first chunk only)")
    parser.add_argument("--init-from", type=Path, help="unet: start from this finished run's UNet (first chunk only)")
    parser.add_argument("--recipe", action="append", default=[], metavar="FIELD=VALUE",
                        help="vae, syncnet, unet: set one field of the stage's recipe (first chunk only; repeatable)")
    parser.add_argument("--stem-gain", type=float, help="prepare, audio: the audio encoder's stem gain (1: the first run's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (keep it the same for a run)")
    parser.add_argument("--media", type=Path, default=MEDIA_DIR, help="prepare, evaluate: the demo clips' folder")
    parser.add_argument("--frames", type=int, help="evaluate: at most this many held-out frames per clip")
    parser.add_argument("--shipped", action="store_true", help="evaluate: the shipped files, not the run's")
    parser.add_argument("--package-dir", type=Path, help="export: where the shipped files go; unpack: where they are")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if REPO_ROOT in out.parents or out == REPO_ROOT:
        parser.error("--out must be outside the repository")

    gain = {} if args.stem_gain is None else {"stem_gain": args.stem_gain}
    if args.stage == "prepare":
        from latentsync_cli.train.data import prepare_dataset

        prepare_dataset(args.media.resolve(), out, **gain)
    elif args.stage == "audio":
        from latentsync_cli.train.data import refresh_audio

        refresh_audio(out, **gain)
    elif args.stage in ("vae", "syncnet", "unet"):
        from latentsync_cli.train.run import recipe_overrides, syncnet_chunk, unet_chunk, vae_chunk
        from latentsync_cli.train.syncnet import SyncRecipe
        from latentsync_cli.train.unet import UnetRecipe
        from latentsync_cli.train.vae import VaeRecipe

        chunk, recipe_type = {"vae": (vae_chunk, VaeRecipe), "syncnet": (syncnet_chunk, SyncRecipe),
                              "unet": (unet_chunk, UnetRecipe)}[args.stage]
        try:
            overrides = recipe_overrides(recipe_type, args.recipe)
        except ValueError as error:
            parser.error(str(error))
        overrides["steps"] = args.total_steps
        if args.init_from is not None:
            overrides["init_from"] = str(args.init_from.resolve())
        finished = chunk(out, args.steps, overrides)
        print(f"{args.stage}: {'finished' if finished else 'not finished: run the same command again'}")
    elif args.stage == "evaluate":
        from latentsync_cli.train.evaluate import evaluate_run

        models = None
        if args.shipped:  # the files in the package, as `--weights proxy` loads them (fp16, rounded)
            from latentsync_cli.weights.load import load_models

            models = load_models("proxy")
        evaluate_run(out, args.media.resolve(), models, max_frames=args.frames)
    elif args.stage == "export":
        from latentsync_cli.train.export import export_run

        export_run(out, args.package_dir)
    elif args.stage == "unpack":
        from latentsync_cli.train.export import unpack_shipped

        unpack_shipped(out, args.package_dir)
    else:
        from latentsync_cli.train.curves import plot_curves

        print(plot_curves(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
