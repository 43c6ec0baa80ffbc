"""lcgen's messages go through `logging` under the `lcgen` logger; entry points call `configure()`
so that progress and status reach the terminal (a library user configures logging as they like)."""
from __future__ import annotations

import logging


def configure(level: int = logging.INFO) -> None:
    """One stderr handler on the `lcgen` logger (idempotent); other libraries' loggers are untouched."""
    logger = logging.getLogger("lcgen")
    logger.setLevel(level)
    if not any(getattr(h, "_lcgen", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._lcgen = True
        logger.addHandler(handler)
        logger.propagate = False
