"""``inference-worker gateway``: read the options, set up logging, run the gateway on uvloop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable

from inference_worker.config import ConfigError
from inference_worker.gateway.app import Gateway
from inference_worker.gateway.config import config_from_args


def main(args: argparse.Namespace) -> int:
    """``inference-worker gateway``: configure, log, serve on uvloop; 2 on a bad option."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"inference-worker: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(Gateway(config).serve())
    except OSError as exc:
        print(f"inference-worker: error: cannot listen: {exc}", file=sys.stderr)
        return 2
