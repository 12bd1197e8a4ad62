"""The training job's parts below its entry point (``jobs.train``): run settings, the per-worker loop."""
