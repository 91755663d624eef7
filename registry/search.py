"""Search filters of the registry's lists, shared by the web UI, the API and the CLI.

Each filter is built once from query parameters (a bad value is a 400 naming the
parameter) and applied by one function, so the web list and ``/api/v1/models/``
answer the same question the same way. Every filter and ordering offered here has
an index (``registry/migrations/0002_search_indexes.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from config.errors import PlatformError
from registry.models import Alias, ModelVersion, RegisteredModel, VersionStatus

MAX_TERM = 200
STATES = tuple(VersionStatus.values)


def _term(params: Mapping[str, str], name: str) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > MAX_TERM:
        raise PlatformError(f"{name}: at most {MAX_TERM} characters", code="invalid")
    return value


def _state(params: Mapping[str, str], name: str) -> str:
    value = _term(params, name)
    if value and value not in STATES:
        raise PlatformError(f"{name}: one of {', '.join(STATES)}", code="invalid")
    return value


@dataclass(frozen=True)
class ModelFilters:
    """Models by name or description (substring), tag, owner, team and their latest version's state.

    As MLflow's ``search_registered_models``: every filter given must match.
    """

    search: str = ""
    tag: str = ""
    owner: str = ""
    team: str = ""
    state: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ModelFilters:
        return cls(
            search=_term(params, "search"),
            tag=_term(params, "tag"),
            owner=_term(params, "owner"),
            team=_term(params, "team"),
            state=_state(params, "state"),
        )

    @property
    def active(self) -> bool:
        return any((self.search, self.tag, self.owner, self.team, self.state))

    def apply(self, queryset: QuerySet[RegisteredModel]) -> QuerySet[RegisteredModel]:
        """``queryset`` narrowed; ``state`` needs the ``latest_status`` annotation of the list query."""
        if self.search:
            queryset = queryset.filter(Q(name__icontains=self.search) | Q(description__icontains=self.search))
        if self.tag:
            if connection.vendor == "postgresql":
                queryset = queryset.filter(tags__contains=[self.tag])  # JSON containment, indexed
            else:  # SQLite (make run's fallback) has no containment: the tag's JSON text in the list's
                queryset = queryset.filter(tags__icontains=json.dumps(self.tag))
        if self.owner:
            queryset = queryset.filter(owner__username=self.owner)
        if self.team:
            queryset = queryset.filter(team__name=self.team)
        if self.state:  # the newest version that exists: the one the list shows
            queryset = queryset.filter(Q(latest_status=self.state))  # annotated by models_with_counts
        return queryset


@dataclass(frozen=True)
class VersionFilters:
    """Versions of one model by state, by an alias pointing at them, or by a metadata key they carry."""

    state: str = ""
    alias: str = ""
    metadata_key: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> VersionFilters:
        # ``status`` is the name the API had first; ``state`` matches the model filter.
        state = _state(params, "state") or _state(params, "status")
        return cls(state=state, alias=_term(params, "alias"), metadata_key=_term(params, "metadata_key"))

    @property
    def active(self) -> bool:
        return any((self.state, self.alias, self.metadata_key))

    def apply(self, queryset: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
        if self.state:
            queryset = queryset.filter(status=self.state)
        if self.alias:
            aliased = Alias.objects.filter(version=OuterRef("pk"), name=self.alias)
            queryset = queryset.filter(Exists(aliased))
        if self.metadata_key:
            queryset = queryset.filter(metadata__has_key=self.metadata_key)
        return queryset
