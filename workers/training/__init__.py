"""Training: the loop (``loop.run_training``), optimiser, LR schedules, runtime, callbacks, state.

Import from the submodules (``workers.training.loop``, ``.schedules``, ...); this package imports
nothing itself so that the light modules (schedules, callbacks) load without the data and model stack.
"""
