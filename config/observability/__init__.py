"""Prometheus metrics of the control plane: django-prometheus plus the platform's own ``kiln_*`` families.

- ``shared``: counters and histograms kept in Redis, so every process (web, Celery) adds to them;
- ``events``: what is counted as it happens (conversions, image builds, tasks, reconcile actions);
- ``collector``: the families read at scrape time (database state, shared counters, queue lengths);
- ``views``: ``/metrics``, in prometheus_client's multiprocess mode under gunicorn.
"""
