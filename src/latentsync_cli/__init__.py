"""latentsync: lip-sync a face video or portrait to speech with LatentSync 1.6."""

__version__ = "0.1.0"
