"""Counting what happens, from any process and any app: the platform's shared Prometheus counters.

- ``shared``: counters and histograms kept in Redis, so every process (web, Celery) adds to them;
- ``events``: what is counted as it happens (conversions, image builds, tasks, reconcile actions).

The ``observability`` app (the top layer) reads them at scrape time beside the database state.
"""
