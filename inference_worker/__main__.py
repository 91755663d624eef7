"""``python -m inference_worker serve ...``."""

from inference_worker.cli import main

raise SystemExit(main())
