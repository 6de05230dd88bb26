"""Structured logs: one event per line, key=value, to stderr."""

from __future__ import annotations

import logging
import os


def configure_logging(service: str) -> None:
    """Log `ts=... level=... service=... logger=... <message>`; level from CRM_LOG_LEVEL."""
    logging.basicConfig(
        level=os.environ.get("CRM_LOG_LEVEL", "INFO").upper(),
        format=f"ts=%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
        force=True,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
