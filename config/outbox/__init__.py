"""The transactional outbox: task messages written with the change that asks for them.

``config.dispatch.send_on_commit`` records the message in the same database transaction as the
change, and sends it once that commits; when the broker cannot take it then (Redis down), the row
stays and the beat job ``outbox.deliver`` sends it as soon as the broker is back. A write therefore
never half-happens: it commits with its message, and the message goes out exactly when it can
(at least once; tasks are idempotent, so a message sent twice does no harm).
"""
