"""Fail fast when the Hugging Face hub cannot be reached.

`datasets` and `transformers` retry for minutes before giving up on an unreachable hub; a user
who forgot `--data` deserves one line at once instead. We probe the endpoint with a short TCP
connect before any hub call.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from harness.errors import HarnessError

PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, fix: str) -> None:
    """Raise a HarnessError naming `what` needed the hub and `fix` (the local alternative)."""
    if not hub_reachable():
        raise HarnessError(f"cannot reach the Hugging Face hub to fetch {what}; {fix}")
