"""The audit job's parts below its entry point (``jobs.audit``): the request, the report and commit."""
