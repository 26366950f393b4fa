"""What the benchmark measured, kept per GPU: the typed entries and the cache file that holds them.

Read by settings resolution (quality `auto`) and the benchmark's report; written
by the benchmark runner (latentsync_cli.bench). Nothing here runs a job.
"""
