"""Autoscaling: replicas follow the load, down to zero for a variant allowed to idle.

- ``table``     the policy's options (bounds, defaults, help): the one place they are written
- ``decide``    the decision, a pure function of an observed load window and the policy
- ``models``    ``ScalingPolicy`` (a variant's policy) and ``ScalingDecision`` (why it scaled)
- ``load``      the load each tick observes: the gateways' stats and activation requests in Redis

The service that applies decisions is ``deployments.services.autoscaling``; it writes the
replica count (desired state) and the reconcile loop starts and drains workers as for a
manual scale, on every backend.
"""
