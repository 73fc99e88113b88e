"""The training loop and its hooks (see ../shared/DESIGN.md, "Layers of the house").

:mod:`mtlrnn.training.window` keeps a log window's step statistics on the device;
:mod:`mtlrnn.training.loop` runs the compiled step and calls hooks; the hooks ``mtlrnn
train`` uses (metrics log and progress, evaluation and best checkpoint, periodic checkpoints,
signals) live in :mod:`mtlrnn.training.hooks`.
"""
