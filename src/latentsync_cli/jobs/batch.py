"""Batch manifests: a .csv or .jsonl file of jobs, run one after another with the models loaded once.

    rows = read_manifest(path)                         # paths resolved against the manifest's folder, columns checked
    job = row_job(base, rows[0], path.parent)           # the command line's job, overridden by the row's columns
    records = run_batch(path, base)                     # one BatchRecord per row; a failed row does not stop the others
    raise_if_failed(path, records)                      # BatchFailedError (exit 8) naming the failed rows

Columns: video, audio, output, and `sync` options by their flag names with
dashes as underscores: every option a Job or its SettingsRequest declares (options.py;
see option_columns). Values are coerced here, so a Ray
worker or another program gets exactly what the command line gets.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from latentsync_cli.errors import (
    BatchFailedError,
    ExitCode,
    Interrupted,
    LatentsyncError,
    UsageError,
)
from latentsync_cli.jobs.job import FinishedJob, Job
from latentsync_cli.jobs.models import ModelCache
from latentsync_cli.jobs.outputs import default_output_path, output_exists
from latentsync_cli.jobs.run import check_flags, run
from latentsync_cli.media.pipes import STDIN
from latentsync_cli.options import DeclaredOption, OptionError, declared_options, parse_column
from latentsync_cli.settings.presets import load_presets
from latentsync_cli.settings.request import SettingsRequest

PATH_COLUMNS = ("video", "audio", "output")


def option_columns() -> dict[str, tuple[type, DeclaredOption]]:
    """Manifest columns besides video/audio/output: every declared option of a Job or its SettingsRequest
    that a row may set, by name (a flag's name with underscores), with the class that declares it."""
    columns = {}
    for owner in (Job, SettingsRequest):
        for declared in declared_options(owner):
            if declared.option.batch:
                columns[declared.name] = (owner, declared)
    return columns


@dataclass(frozen=True)
class BatchRow:
    """One row of a batch manifest: paths resolved, other columns kept as `sync` options."""

    number: int  # 1-based row number, for messages
    video: Path
    audio: Path | None
    output: Path | None
    options: dict[str, str] = field(default_factory=dict)


def read_manifest(path: Path) -> list[BatchRow]:
    """Read a `.csv` (header row) or `.jsonl` (one object per line) batch manifest.

    Relative paths are taken from the manifest's folder, and a relative output may
    not leave that folder (`../x.mp4` is refused). Unknown columns are an error for
    the whole file, since they would otherwise be silently ignored on every row.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: batch file not found; give a .csv or .jsonl file")
    rows = _read_rows(path)
    if not rows:
        raise UsageError(f"{path}: the batch file has no jobs")
    base = path.parent.absolute()
    allowed_options = option_columns()
    jobs = []
    for number, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(PATH_COLUMNS) - set(allowed_options))
        if unknown:
            raise UsageError(
                f"{path}: row {number}: unknown column {unknown[0]!r}; "
                f"allowed: {', '.join(PATH_COLUMNS + tuple(sorted(allowed_options)))}"
            )
        if not row.get("video"):
            raise UsageError(f"{path}: row {number}: the 'video' column is empty")
        output = _batch_path(row.get("output"), base)
        if output is not None and not Path(row["output"]).expanduser().is_absolute():
            if not _is_inside(output, base):
                raise UsageError(f"{path}: row {number}: output {row['output']!r} leaves the batch folder {base}")
        options = {k: str(v) for k, v in row.items() if k not in PATH_COLUMNS and v not in (None, "")}
        jobs.append(
            BatchRow(
                number=number,
                video=_batch_path(row["video"], base),
                audio=_batch_path(row.get("audio"), base),
                output=output,
                options=options,
            )
        )
    return jobs


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read the batch file ({error})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise UsageError(f"{path}: the CSV header must name a 'video' column (and optionally audio, output)")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}: line {line_number}: each line must be a JSON object")
            rows.append(row)
        return rows
    raise UsageError(f"{path}: unknown batch file type {suffix!r}; use .csv or .jsonl")


def _batch_path(value, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    candidate = Path(str(value)).expanduser()
    return Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))


def _is_inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


# --- rows as jobs ----------------------------------------------------------------------------


def row_job(base: Job, row: BatchRow, manifest_folder: Path) -> Job:
    """The job of one row: `base` (the command line's flags), overridden by the row's columns
    (UsageError when a column's text is not of its option's type)."""
    columns = option_columns()
    settings_values, job_values = {}, {}
    for name, text in row.options.items():
        owner, declared = columns[name]
        try:
            value = parse_column(declared, text, manifest_folder)
        except OptionError as error:
            raise UsageError(str(error)) from None
        (settings_values if owner is SettingsRequest else job_values)[name] = value
    return replace(
        base,
        video=row.video,
        audio=row.audio,
        output=row.output,
        settings=replace(base.settings, **settings_values),
        work_dir=None,
        **job_values,
    )


# --- running a manifest ----------------------------------------------------------------------


@dataclass
class BatchRecord:
    """What happened to one manifest row (one JSON line with --json)."""

    job: int
    status: str  # ok | skipped | failed
    video: str
    output: str | None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    frames: int = 0
    resumed_windows: int = 0


# run_row_job(row, job, number_of_rows) -> FinishedJob: how the caller runs one row's job
RowRunner = Callable[[BatchRow, Job, int], FinishedJob]


def run_batch(
    manifest: Path,
    base: Job,
    run_row_job: RowRunner | None = None,
    on_record: Callable[[BatchRecord], None] | None = None,
) -> list[BatchRecord]:
    """Run every row of `manifest` in order; one BatchRecord per row.

    A row whose output exists is skipped (unless `base.overwrite`); a row that
    fails is recorded and the next one runs; only SIGINT/SIGTERM stop the
    batch. By default each job runs with `run` and one shared ModelCache, so
    the models are loaded once; `on_record` sees each record as it is made.
    """
    rows = read_manifest(manifest)
    folder = Path(manifest).parent.absolute()
    check_rows(manifest, rows, base, folder)
    if run_row_job is None:
        cache = ModelCache()
        run_row_job = lambda row, job, total: run(job, cache)
    folder = Path(manifest).parent.absolute()
    records = []
    for row in rows:
        record = run_row(row, base, folder, lambda job, row=row: run_row_job(row, job, len(rows)))
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def check_rows(manifest: Path, rows: list[BatchRow], base: Job, folder: Path) -> None:
    """What the manifest says, checked before any job runs (UsageError, exit 2, naming the row).

    Every row's values (as `sync` would check its flags) and that no two rows
    write the same output. What a row's files hold is found when it runs: then
    only that row fails.
    """
    table = load_presets(base.settings.presets_file)
    writers: dict[Path, int] = {}
    for row in rows:
        try:
            job = row_job(base, row, folder)
            if STDIN in (job.video, job.output):
                raise UsageError("a batch row reads and writes files, not - (stdin/stdout)")
            check_flags(job, table)
        except UsageError as error:
            raise UsageError(f"{manifest}: row {row.number}: {error.message}") from None
        output = Path(os.path.realpath(job.output or default_output_path(job.video)))
        if output in writers:
            raise UsageError(
                f"{manifest}: rows {writers[output]} and {row.number} both write {output}; give each row its own output"
            )
        writers[output] = row.number


def raise_if_failed(manifest: Path, records: list[BatchRecord]) -> None:
    """BatchFailedError (exit 8) naming the failed rows, if any."""
    failed = [record for record in records if record.status == "failed"]
    if failed:
        numbers = ", ".join(str(record.job) for record in failed)
        raise BatchFailedError(f"{manifest}: {len(failed)} of {len(records)} jobs failed (rows {numbers}); see above")


def run_row(row: BatchRow, base: Job, manifest_folder: Path, run_job: Callable[[Job], FinishedJob]) -> BatchRecord:
    """One row, whatever happens to it (only a signal escapes)."""
    started = time.monotonic()
    record = BatchRecord(row.number, "ok", str(row.video), None)
    try:
        job = row_job(base, row, manifest_folder)
        output = job.output if job.output is not None else default_output_path(job.video)
        record.output = str(output)
        if output_exists(output) and not job.overwrite:
            record.status = "skipped"  # anything else at that path (a folder, say) fails the row below
        else:
            finished = run_job(job)
            record.frames = finished.result.frames
            record.resumed_windows = finished.result.resumed_windows
    except Interrupted:
        raise
    except LatentsyncError as error:
        record.status, record.error, record.exit_code = "failed", error.message, int(error.exit_code)
    except Exception as error:
        record.status, record.exit_code = "failed", int(ExitCode.INTERNAL)
        record.error = f"internal error: {type(error).__name__}: {error}"
    record.seconds = round(time.monotonic() - started, 3)
    return record
