"""neuronlib's one logger. Library code logs (``logging.getLogger("neuronlib")`` and its children) and never prints;
the CLI and the notebooks decide what to show with :func:`show_logs`."""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("neuronlib")
_HANDLER_FLAG = "_neuronlib_handler"


def show_logs(level: int | str = "INFO", stream=None) -> logging.Handler:
    """Print neuronlib's log records of ``level`` and above to ``stream`` (default stderr). Idempotent."""
    for handler in logger.handlers:
        if getattr(handler, _HANDLER_FLAG, False):
            handler.stream = stream or sys.stderr  # the stream of now (sys.stderr may have been replaced and closed)
            handler.setLevel(level)
            logger.setLevel(min(logger.level or logging.WARNING, handler.level))
            return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("neuronlib: %(message)s"))
    handler.setLevel(level)
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    return handler
