"""Simulators for a shop that has no data of its own: the built-in world, its vocabulary, the click model
and simulated session logs.

They stand on `ltr.data` (schemas, dataset directories) and nothing stands on them except the pipeline,
the CLI, tests and benchmarks: no training, serving or feature code depends on simulated data.
"""
