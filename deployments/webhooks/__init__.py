"""Signed webhooks for release events: subscriptions, the event table, delivery with retries.

Part of the deployments app (it sees every release event, and the layer check knows only the
apps' names). The registry announces each audit event through ``registry.hooks.event_recorded``;
``events.on_event_recorded`` writes one delivery row per matching subscription in the same
transaction and queues its send through the outbox.
"""
