"""Evaluation: I3D/FVD, VBench-style metrics, batched Ray eval jobs, sweeps, run comparison.

Import submodules explicitly (``from eval.fvd import frechet_distance``); never
``import eval``, which would shadow the builtin.
"""
