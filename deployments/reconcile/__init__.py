"""The reconcile loop: the only code that starts, drains and stops workers.

Runs from beat every few seconds and right after every change, under a per-deployment
advisory lock, so overlapping runs never both act. Services write desired state (replicas,
version, batching, "delete this deployment", "remove this variant"); each pass observes
(backend status, readiness, report heartbeats), then acts until the workers match.

- ``loop``: one pass over a deployment, or over all of them, and finishing deletions;
- ``variant``: observing and acting on one variant's workers (crash loops, backoff, drain,
  rolling updates, adoption of workers that outlived a platform restart);
- ``service``: the same for a variant whose backend owns placement (swarm: one service, its tasks);
- ``crashes``: a worker's death read alike by both: a crash or not, when crashes fail the variant;
- ``spec``: what a worker runs (the fingerprint that decides a rolling update, the launch spec);
- ``status``: the deployment's status from its workers;
- ``cleanup``: orphans no row knows, and stopping workers when the platform itself stops;
- ``exits``: a local worker's exit noticed at once (a pidfd), queuing a pass for its deployment.
"""

from deployments.reconcile.cleanup import stop_orphans, stop_workers
from deployments.reconcile.loop import reconcile_all, reconcile_deployment
from deployments.reconcile.spec import spec_hash

__all__ = ("reconcile_all", "reconcile_deployment", "spec_hash", "stop_orphans", "stop_workers")
