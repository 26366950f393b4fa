"""The core job API: what the CLI, a Ray worker, the benchmark, a test or another program calls to lip-sync.

    job.py          Job (the request; its options declared once), PreparedJob, FinishedJob
    run.py          prepare() -> PreparedJob, claim_output(), execute() -> FinishedJob, run()
    models.py       ModelCache: the one place models are loaded and handed to a job in a known state
    window_plan.py  which windows a job makes, takes from its work dir, or leaves to other shards
    batch.py        manifests (.csv / .jsonl): read_manifest(), row_job(), run_batch() -> [BatchRecord]
    outputs.py      the default output name and the checks that refuse an output before any work
    scratch.py      every job's private scratch folder beside its output (its lease on it); what dead jobs left
    lease.py        leases: claims with a unique token and a heartbeat, taken over when their job has died
    signals.py      SIGINT/SIGTERM -> Interrupted (exit 130/143) after every `finally` has run
    workdir.py      --work-dir: finished windows on disk (leased, fingerprinted), so a killed job resumes
    shards.py       Shard(K, N): contiguous window ranges
    cluster.py      Ray: a job's shards on a cluster's workers

Nothing here imports typer or rich; the core talks to a display only through the
`Progress` protocol, and reports what it found in its return values.
"""
