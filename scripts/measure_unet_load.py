"""Measure building and loading the full-size (1.27 B parameter) UNet on CPU: seconds and peak memory.

Not a test, and no forward pass. Each step runs in its own child process, which
reports its wall time, its peak resident memory (ru_maxrss) and, at the end,
how much of its resident memory is anonymous (really allocated) and how much is
file-backed (memory-mapped weights, reclaimable page cache).

    python3 scripts/measure_unet_load.py                 # meta build, random init, save + load fp32 files
    python3 scripts/measure_unet_load.py --skip-files    # only the meta build and the random init

The checkpoint files are written to --workdir (5.1 GB each in fp32) and removed
afterwards unless --keep. They were just written, so they load from the page
cache: the load times exclude disk reads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def memory_now() -> dict:
    """Current RssAnon and RssFile of this process, in GB (Linux /proc)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            name, kilobytes, _ = line.split()
            values[name.rstrip(":")] = int(kilobytes) / 1e6
    return values


# --- what a child process does ---------------------------------------------------


def child(step: str, path: str, dtype_name: str) -> dict:
    from safetensors.torch import save_file

    from latentsync_cli.models.unet_config import UNetConfig
    from latentsync_cli.weights.checkpoint import build_meta_unet, build_random_unet, load_unet

    config = UNetConfig.latentsync_1_6()
    dtype = DTYPES[dtype_name]
    start = time.perf_counter()
    if step == "meta":
        model = build_meta_unet(config)
    elif step == "random":
        model = build_random_unet(config, "cpu", dtype, seed=0)
    elif step == "save":
        model = build_random_unet(config, "cpu", dtype, seed=0)
        state = model.state_dict()
        if path.endswith(".safetensors"):
            save_file(state, path)
        else:
            torch.save({"global_step": 0, "state_dict": state}, path)
    elif step == "load":
        model = load_unet(path, config, "cpu", dtype)
        # Touch every weight once, as a first forward would, so that mmapped pages count.
        checksum = sum(float(p.sum(dtype=torch.float32)) for p in model.parameters())
        assert checksum == checksum, "NaN in the loaded weights"
    else:
        raise ValueError(step)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes
    params = sum(p.numel() for p in model.parameters())
    return {"step": step, "seconds": round(seconds, 2), "peak_rss_gb": round(peak_gb, 2), "params": params,
            **{k: round(v, 2) for k, v in memory_now().items()}}  # fmt: skip


def run_child(step: str, path: str = "", dtype: str = "fp32") -> dict:
    command = [sys.executable, __file__, "--child", step, "--path", path, "--dtype", dtype]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--skip-files", action="store_true", help="skip writing and loading checkpoint files")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.dtype)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [("meta build", run_child("meta")), ("random init, CPU fp32", run_child("random", dtype="fp32"))]
    rows.append(("random init, CPU fp16", run_child("random", dtype="fp16")))
    files = []
    if not args.skip_files:
        pt = args.workdir / "latentsync_random_unet_fp32.pt"
        st = args.workdir / "latentsync_random_unet_fp32.safetensors"
        files = [pt, st]
        try:
            for path in files:
                rows.append((f"save {path.suffix} fp32", run_child("save", str(path), "fp32")))
            for path in files:
                for dtype in ("fp32", "fp16"):
                    rows.append((f"load_unet {path.suffix} -> CPU {dtype}", run_child("load", str(path), dtype)))
        finally:
            for path in files:
                if not args.keep:
                    path.unlink(missing_ok=True)

    print(f"{'step':34} {'seconds':>8} {'peak RSS GB':>12} {'RssAnon GB':>11} {'RssFile GB':>11}")
    for name, row in rows:
        print(f"{name:34} {row['seconds']:8.2f} {row['peak_rss_gb']:12.2f} "
              f"{row.get('RssAnon', 0):11.2f} {row.get('RssFile', 0):11.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
