"""Batch work as Ray jobs: entry points (train, generate, evaluate, audit) over data, store, metrics, trainer."""
