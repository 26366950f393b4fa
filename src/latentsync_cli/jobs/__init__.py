"""The core job API: what the CLI, a Ray worker, a test or another program calls to lip-sync.

    run.py      Job (the request), prepare() -> PreparedJob, execute() -> FinishedJob, run(), ModelCache
    batch.py    manifests (.csv / .jsonl): read_manifest(), row_job(), run_batch() -> [BatchRecord]
    outputs.py  the default output name and the checks that refuse an output before any work
    scratch.py  every job's private scratch folder beside its output (its lease on it); what dead jobs left
    lease.py    leases: claims with a unique token and a heartbeat, taken over when their job has died
    signals.py  SIGINT/SIGTERM -> Interrupted (exit 130/143) after every `finally` has run
    workdir.py  --work-dir: finished windows on disk (locked, fingerprinted), so a killed job resumes

Nothing here imports typer or rich; the core talks to a display only through the
pipeline's `Progress` protocol, and reports what it found in its return values.
"""
