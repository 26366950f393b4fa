#!/usr/bin/env bash
# The GPU checks in one command, for an H100/H200 machine: prints one JSON summary on stdout.
#
#   scripts/gpu_check.sh [--dry-run] [--budget SECONDS]
#
# Steps, in this order (each one's failure, timeout or skip is recorded in the
# JSON; nothing aborts the run):
#   environment      torch, CUDA device, ffmpeg, which modules import
#   clip             a generated face clip and speech (1080x1920, 2 s)
#   nvenc_probe      media.encode.choose_encoder("auto"): does h264_nvenc open here
#   restore_parity   face.restore_torch on CPU vs CUDA vs the OpenCV path, and ms per frame
#   profile_<mode>   `latentsync profile --weights random` for normal, fast, turbo, ultra
#   benchmark        `latentsync benchmark --quick --weights random` (2-second clips)
#   profile_encoder_auto    profile normal with --encoder auto (a flag that may not exist yet)
#   media_path       scripts/measure_media_path.py with the restore on the device: fps, transcode floor, ratio
#   compile_<a>_graphs_<b>  profile normal with torch.compile and CUDA graphs on/off
#                    (--optimization-level aggressive turns the graphs on, balanced off)
#
# --dry-run runs the same sequence on the CPU with --weights random-tiny, a
# 1-second 640x480 clip and a one-mode benchmark: it checks the script, not the GPU.
# The run stops starting steps when --budget seconds are spent (default 450; 300 for
# --dry-run, where the torch.compile steps then time out: compiling on this CPU takes longer).
#
# The GPU machine has no network and lacks some dependencies (diffusers,
# librosa, mediapipe, imageio-ffmpeg, platformdirs, tomli-w, scikit-image...):
# wheels put in the repository's ignored .whl/ folder are installed first.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

DRY_RUN=0
BUDGET=
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --budget) BUDGET=${2:-}; shift ;;
        *) echo "gpu_check.sh: unknown option $1 (use --dry-run or --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$BUDGET" ]; then
    BUDGET=$([ "$DRY_RUN" = 1 ] && echo 300 || echo 450)
fi
case "$BUDGET" in
    ''|*[!0-9]*) echo "gpu_check.sh: --budget needs whole seconds, got '$BUDGET'" >&2; exit 2 ;;
esac

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
STEPS=$WORK/steps
mkdir -p "$STEPS"
DEADLINE=$(( $(date +%s) + BUDGET ))
# Caches, settings and reports go to the scratch folder, not the user's own.
export LATENTSYNC_CACHE_DIR=$WORK/cache XDG_CACHE_HOME=$WORK/xdg/cache
export XDG_CONFIG_HOME=$WORK/xdg/config XDG_DATA_HOME=$WORK/xdg/data
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}

if [ "$DRY_RUN" = 1 ]; then
    # 2 denoising steps per profile: normal mode's 20 take minutes even with the tiny model here.
    WEIGHTS=random-tiny DEVICE=cpu SECONDS_OF_CLIP=1 CLIP_SIZE="640,480" FEWER_STEPS=(--steps 2)
    BENCH=(--duration 0.5 --modes normal)
    MEDIA_FRAMES=20
    export OMP_WAIT_POLICY=PASSIVE  # idle OpenMP threads would spin against the pipeline's own threads
else
    WEIGHTS=random DEVICE=auto SECONDS_OF_CLIP=2 CLIP_SIZE="1080,1920" FEWER_STEPS=()
    BENCH=(--duration 2)
    MEDIA_FRAMES=100
fi
CLIP=$WORK/face.mp4
SPEECH=$WORK/speech.wav

# step NAME LIMIT_S COMMAND...: run it with a time limit, keep stdout, stderr, status and wall time.
step() {
    local name=$1 limit=$2
    shift 2
    echo "$name" >> "$STEPS/order"
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 10 ]; then
        echo "skipped: the ${BUDGET} s budget was spent" > "$STEPS/$name.skipped"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "gpu_check: $name (at most ${limit} s)" >&2
    local start
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$STEPS/$name.out" 2> "$STEPS/$name.err"
    echo $? > "$STEPS/$name.rc"
    echo "$limit" > "$STEPS/$name.limit"
    python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 2))" "$start" > "$STEPS/$name.wall"
}

# `timeout` runs programs, not shell functions: the commands are arrays.
LATENTSYNC=(python3 -m latentsync_cli)
PROFILE=("${LATENTSYNC[@]}" profile "$CLIP" "$SPEECH" --weights "$WEIGHTS" --device "$DEVICE" --json "${FEWER_STEPS[@]}")

if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
    step install_wheels 120 python3 -m pip install -q --no-index --no-deps --target /tmp/site "$REPO"/.whl/*.whl
    export PYTHONPATH=/tmp/site:$REPO/src
fi

step environment 60 python3 - <<'PY'
import importlib, json, os, subprocess
import torch
modules = ["diffusers", "librosa", "mediapipe", "imageio_ffmpeg", "platformdirs", "tomli_w", "skimage", "scipy"]
missing = {}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as error:  # any import failure is worth reporting, not only ImportError
        missing[name] = f"{type(error).__name__}: {error}"
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "missing_modules": missing}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
try:
    import imageio_ffmpeg
    version = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    info["ffmpeg"] = version.splitlines()[0] if version else None
except Exception as error:
    info["ffmpeg"] = f"unavailable: {error}"
print(json.dumps(info))
PY

step clip 120 python3 - "$CLIP" "$SPEECH" "$SECONDS_OF_CLIP" "$CLIP_SIZE" <<'PY'
import json, sys
from latentsync_cli.media.synthetic import make_face_clip, make_speech
clip, speech, seconds, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), tuple(map(int, sys.argv[4].split(",")))
make_face_clip(clip, seconds, size=size, preset="ultrafast")
make_speech(speech, seconds)
print(json.dumps({"clip": clip, "speech": speech, "seconds": seconds, "size": size}))
PY

step nvenc_probe 90 python3 - <<'PY'
import json
from latentsync_cli.media.encode import choose_encoder, nvenc_open_error
choice = choose_encoder("auto")
print(json.dumps({"nvenc_opens": nvenc_open_error() is None, "auto_picks": choice.name, "reason": choice.reason}))
PY

step restore_parity 120 python3 - <<'PY'
import json, time
import cv2, numpy as np, torch
from latentsync_cli.face.restore import restore_faces
from latentsync_cli.face.restore_torch import restore_faces_torch

def differing(ours, theirs):
    diff = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
    return {"max_diff": int(diff.max()), "fraction_differing": float((diff > 0).mean())}

def ms_per_frame(work, count, sync=lambda: None, repeats=3):
    work(); sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter(); work(); sync()
        best = min(best, time.perf_counter() - start)
    return round(best / count * 1000, 2)

rng = np.random.default_rng(0)
count = 16
frame = cv2.GaussianBlur(rng.integers(0, 256, (1920, 1080, 3), dtype=np.uint8), (0, 0), 3)
faces = torch.from_numpy(rng.uniform(-1.1, 1.1, (count, 3, 512, 512)).astype(np.float32))
base = np.array([[1.1, 0.08, -260.5], [-0.08, 1.1, -610.25]])
affines = [base * [[1 + 0.02 * i], [1 + 0.02 * i]] + [[0, 0, 3.0 * i], [0, 0, -2.0 * i]] for i in range(count)]
frames = torch.from_numpy(np.stack([frame] * count))
opencv = np.stack(restore_faces([frame] * count, faces, affines))
cpu = restore_faces_torch(frames, faces, affines).numpy()
report = {"frames": count, "size": "1080x1920", "torch_cpu_vs_opencv": differing(cpu, opencv),
          "ms_per_frame": {"opencv_cpu": ms_per_frame(lambda: restore_faces([frame] * count, faces, affines), count),
                           "torch_cpu": ms_per_frame(lambda: restore_faces_torch(frames, faces, affines), count)}}
if torch.cuda.is_available():
    frames_gpu, faces_gpu = frames.cuda(), faces.cuda()
    gpu = restore_faces_torch(frames_gpu, faces_gpu, affines).cpu().numpy()
    report["torch_cuda_vs_torch_cpu"] = differing(gpu, cpu)
    report["torch_cuda_vs_opencv"] = differing(gpu, opencv)
    report["ms_per_frame"]["torch_cuda"] = ms_per_frame(
        lambda: restore_faces_torch(frames_gpu, faces_gpu, affines), count, torch.cuda.synchronize, repeats=10)
else:
    report["torch_cuda_vs_torch_cpu"] = "no CUDA device"
print(json.dumps(report))
PY

for mode in normal fast turbo ultra; do
    step "profile_$mode" 75 "${PROFILE[@]}" --mode "$mode"
done
step benchmark 150 "${LATENTSYNC[@]}" benchmark --quick --weights "$WEIGHTS" --device "$DEVICE" --json \
    --report "$WORK/benchmark-report" "${BENCH[@]}"
step profile_encoder_auto 75 "${PROFILE[@]}" --mode normal --encoder auto
# The media path with the restore on the model's device, against the transcode floor (a generated 1080x1920 clip).
step media_path 120 python3 "$REPO/scripts/measure_media_path.py" --clips "$WORK/no-clips" --frames "$MEDIA_FRAMES" \
    --restore torch --device "$DEVICE"
# Compiling takes longest, so it comes last: whatever the budget leaves.
step compile_off_graphs_off 75 "${PROFILE[@]}" --mode normal --optimization-level balanced --no-compile
step compile_off_graphs_on 75 "${PROFILE[@]}" --mode normal --optimization-level aggressive --no-compile
step compile_on_graphs_off 150 "${PROFILE[@]}" --mode normal --optimization-level balanced --compile
step compile_on_graphs_on 150 "${PROFILE[@]}" --mode normal --optimization-level aggressive --compile

python3 - "$STEPS" "$DRY_RUN" "$BUDGET" "$WORK" <<'PY'
import json, sys
from pathlib import Path

steps, dry_run, budget, work = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]

def read(name, suffix):
    path = steps / f"{name}{suffix}"
    return path.read_text(errors="replace") if path.exists() else None

def parsed(stdout):
    """The step's JSON: the whole stdout, else its last line that parses."""
    for text in [stdout] + stdout.strip().splitlines()[::-1]:
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None

LEFT_OUT = ("trace", "weights", "random_weights_note", "video", "audio", "output")  # long, or the same every run

def condensed(result):
    if isinstance(result, dict):
        result = {key: value for key, value in result.items() if key not in LEFT_OUT}
        resolved = result.get("resolved_settings")
        if isinstance(resolved, dict) and "settings" in resolved:
            result["resolved_settings"] = resolved["settings"]  # without where each value came from
        if result.get("frames") and result.get("wall_s"):
            result["fps"] = round(result["frames"] / result["wall_s"], 2)
    return result

summary = {"dry_run": dry_run, "budget_s": budget, "scratch": work, "steps": {}}
order = (steps / "order").read_text().split() if (steps / "order").exists() else []
for name in order:
    skipped = read(name, ".skipped")
    if skipped:
        summary["steps"][name] = {"ok": False, "skipped": skipped.strip()}
        continue
    rc = int(read(name, ".rc").strip())
    stdout, stderr = read(name, ".out") or "", read(name, ".err") or ""
    entry = {"ok": rc == 0, "rc": rc, "wall_s": float(read(name, ".wall").strip())}
    if rc in (124, 137):
        entry["error"] = f"timed out after {read(name, '.limit').strip()} s"
    elif rc != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        entry["error"] = lines[-1] if lines else f"exit status {rc}"
        entry["stderr_tail"] = lines[-6:]
    result = parsed(stdout) if stdout.strip() else None
    if result is not None:
        entry["result"] = condensed(result)
    elif stdout.strip():
        entry["stdout_tail"] = stdout.strip().splitlines()[-6:]
    summary["steps"][name] = entry
summary["failed_steps"] = [name for name, entry in summary["steps"].items() if not entry["ok"]]
print(json.dumps(summary, indent=1))
PY
