"""Deleting many rows a few at a time: one transaction per batch, a bound on the batches a pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet


def delete_in_batches(
    rows: QuerySet[Any],
    *,
    size: int,
    most: int,
    column: str = "",
    then: Callable[[list[Any]], int] | None = None,
) -> tuple[int, int]:
    """Delete ``rows`` ``size`` at a time, each batch in its own transaction, at most ``most``
    batches (a longer backlog goes on in the next pass). Where ``then`` is given, it is called
    after each batch committed with that batch's values of ``column`` (files to remove, say).
    How many rows of the model went, and the sum of what ``then`` answered."""
    model = rows.model
    fields = ("pk", column) if column else ("pk",)
    deleted = after = 0
    for _ in range(most):
        batch = list(rows.order_by().values_list(*fields)[:size])  # no ordering: the filter's index
        if not batch:
            break
        with transaction.atomic():
            gone = model.objects.filter(pk__in=[row[0] for row in batch]).delete()[1]
        deleted += gone.get(model._meta.label, 0)
        if then is not None:
            after += then([row[1] if column else row[0] for row in batch])
    return deleted, after
