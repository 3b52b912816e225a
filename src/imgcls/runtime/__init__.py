"""Runtime pieces every layer may use (DESIGN.md "runtime/"): the Batch type, precision and
autocast, distributed helpers, CPU threads for processes that share the cores, and atomic checkpoint
I/O. Nothing here imports models, data, engine or evaluation, so heads, evaluation and the trainer can
all depend on it."""
