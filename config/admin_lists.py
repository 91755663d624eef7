"""What every admin list of a table that grows shares: an estimated count, no second full count.

Django's changelist counts the filtered rows for its paginator and, unless told not
to, the whole table once more. On PostgreSQL an unfiltered list of a large table
takes the planner's estimate (``pg_class.reltuples``, kept by autovacuum) instead;
a filtered list, a small table, or another database counts exactly.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Model
from django.utils.functional import cached_property

ESTIMATE_FROM_ROWS = 10_000
_M = TypeVar("_M", bound=Model)


def estimated_rows(table: str, using: str = "default") -> int | None:
    """The planner's row estimate of ``table`` on PostgreSQL; None elsewhere or when never analysed."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


class EstimatedCountPaginator(Paginator[Any]):
    """A paginator that estimates the count of an unfiltered large table instead of counting it."""

    @cached_property
    def count(self) -> int:
        queryset: Any = self.object_list
        query = getattr(queryset, "query", None)
        if query is not None and not query.where:
            estimate = estimated_rows(queryset.model._meta.db_table, queryset.db)
            if estimate is not None and estimate >= ESTIMATE_FROM_ROWS:
                return estimate
        return super().count


class LargeTableAdmin(admin.ModelAdmin[_M], Generic[_M]):
    """Base of the admin of a table that grows: estimated counts, no full-table count."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
