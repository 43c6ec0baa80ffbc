"""Training plumbing both loops (tokenizer, priors) share: typed configs and presets, the accelerator,
atomic checkpoints and exact resume, and the run itself (steps, EMA, logging, end of run)."""
