"""The loss curves of a run: <out>/loss_curves.png from each stage's log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from latentsync_cli.train.loop import LOG_FILE

CURVES = {"vae": ("loss", "mouth_mse"), "unet": ("loss", "mouth_mse")}


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4))
    for axis, (stage, keys) in zip(axes, CURVES.items()):
        lines = read_log(out / stage / LOG_FILE)
        for key in keys:
            axis.plot([line["step"] for line in lines], [line[key] for line in lines], label=key)
        axis.set_title(f"{stage} (mean of every 10 steps)")
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.legend()
    path = out / "loss_curves.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
