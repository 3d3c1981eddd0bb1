"""Ray Train and Ray Tune entry points for the science in ``workers``.

- ``train``: ``run_train_job`` runs a ``TrainSpec`` as a Ray Train ``TorchTrainer`` (1..N workers).
- ``runtime``: the Ray Train ``Runtime`` of the training loop and the worker-side glue.
- ``sweep``: ``run_sweep`` runs a sweep as a Ray Tune ``Tuner`` whose trials are Train runs.
- ``sweep_spec``: the sweep spec and its expansion (torch-free and Ray-free, for the service).

This package's ``__init__`` imports nothing, so ``workers.contract.sweep`` stays importable
without torch or Ray.
"""
