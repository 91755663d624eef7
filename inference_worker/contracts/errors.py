"""The one error every contract raises: a value on the wire that its reader refuses."""

from __future__ import annotations


class ContractError(ValueError):
    """A message (or an option value) that breaks its contract; ``field`` names where.

    ``field`` is the dotted path inside the message (``window.latency_ms.p50``,
    ``deployments.fraud.variants[0].weight``) or the option's name
    (``max_batch_size``); ``reason`` says what is wrong without the path, so a
    caller can put its own name in front (a command-line flag, an API field).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
