"""What the registry announces to the apps above it (they register in their ``AppConfig.ready()``).

- ``alias_moved(alias_id=...)``: an alias was created or moved; called after the commit.
- ``event_recorded(event=...)``: an audit event was recorded; called inside the change's
  transaction (webhook deliveries are written with it).
- ``version_serving(version_id=...)``: the deployments serving a version with their live numbers,
  for the version page (each registered function returns a list of rows, or None).
- ``versions_in_use(model_id=..., version_ids=[...], whole_model=...)``: what in the apps above still
  uses these versions (``whole_model``: or the model, which goes with them), each a readable
  reason; a deletion is refused while any is given. Called inside the deleting transaction.
- ``versions_deleting(version_ids=[...])``: the versions are about to be deleted (nothing uses them):
  the apps above drop their history of them, inside the deleting transaction.
- ``version_ready(version=...)``: a conversion finished and the version is ready; called inside
  the transaction that marks it (work it queues is sent once that commits).
"""

from __future__ import annotations

from typing import Any

from config.hooks import Hook

alias_moved: Hook[..., None] = Hook("registry.alias_moved")
event_recorded: Hook[..., None] = Hook("registry.event_recorded")
version_serving: Hook[..., list[dict[str, Any]] | None] = Hook("registry.version_serving")
version_ready: Hook[..., None] = Hook("registry.version_ready")
versions_in_use: Hook[..., list[str]] = Hook("registry.versions_in_use")
versions_deleting: Hook[..., None] = Hook("registry.versions_deleting")
