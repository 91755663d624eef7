"""Prometheus metrics of the control plane: django-prometheus plus the platform's own ``kiln_*`` families.

- ``collector``: the families read at scrape time (database state, shared counters from
  ``config.metrics``, queue lengths);
- ``views``: ``/metrics``, in prometheus_client's multiprocess mode under gunicorn;
- ``api``: Prometheus HTTP service discovery of the workers.
"""
