"""The row-job state machine both long jobs share (``config.jobs.RowJob``), on a real database.

Every table runs against both jobs as defined in their services, a conversion on a version's
``conversion_*`` fields and an image build on a ``WorkerImage``, so the shared base and each job's
field mapping are proven together.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils import timezone

from config.jobs import RowJob, StaleCause
from deployments.models import WorkerImage
from deployments.services.images import IMAGE_JOB
from registry.models import ModelVersion
from registry.services.conversion import CONVERSION_JOB
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db

LONG_AGO = timedelta(days=2)


@dataclass
class Kind:
    """One job and a maker of its rows (queued, with an attempt, unless told otherwise)."""

    job: RowJob[Any]
    make: Callable[..., models.Model]

    def get(self, row: models.Model, logical: str) -> Any:
        """A field of the row by its role in the job (``tries``, ``heartbeat``, ``started``...)."""
        row.refresh_from_db()
        return getattr(row, getattr(self.job, f"{logical}_field"))

    def set(self, row: models.Model, **roles: Any) -> None:
        """Write fields by their role, with an UPDATE (so auto_now fields take the value given)."""
        fields = {getattr(self.job, f"{role}_field"): value for role, value in roles.items()}
        self.job.model._default_manager.filter(pk=row.pk).update(**fields)


def _conversion(owner: User) -> Kind:
    numbers = iter(range(1, 100))

    def make(**fields: Any) -> models.Model:
        fields.setdefault("status", CONVERSION_JOB.queued)
        fields.setdefault("conversion_attempt", uuid.uuid4())
        return ready_version(owner, model="jobs", number=next(numbers), **fields)

    return Kind(job=CONVERSION_JOB, make=make)


def _image(owner: User) -> Kind:
    version = ready_version(owner, model="images")
    numbers = iter(range(1, 100))

    def make(**fields: Any) -> models.Model:
        number = next(numbers)
        fields.setdefault("status", IMAGE_JOB.queued)
        fields.setdefault("attempt", uuid.uuid4())
        return WorkerImage.objects.create(
            key=f"{number:064x}",
            version=version,
            flavour="cpu",
            worker_code_hash="c" * 64,
            base_image="kiln/python-base:bookworm",
            tag=f"kiln-worker/images:v1-cpu-{number}",
            **fields,
        )

    return Kind(job=IMAGE_JOB, make=make)


@pytest.fixture(params=["conversion", "image"])
def kind(request: pytest.FixtureRequest, owner: User) -> Kind:
    maker: Callable[[User], Kind] = {"conversion": _conversion, "image": _image}[request.param]
    return maker(owner)


# (step, attempt, what it returns, the row's status after it, its tries after it)
LIFE = [
    ("claim", "A", True, "running", 1),
    ("claim", "A", False, "running", 1),  # a duplicate while the first one beats: nothing to do
    ("claim", "B", False, "running", 1),  # another attempt never takes the row
    ("heartbeat", "A", True, "running", 1),
    ("heartbeat", "B", False, "running", 1),
    ("fall silent", "A", None, "running", 1),  # the worker died: its heartbeat ages past the lease
    ("claim", "B", False, "running", 1),
    ("claim", "A", True, "running", 2),  # the redelivered message resumes the same attempt
    ("complete", "B", False, "running", 2),
    ("fail", "B", False, "running", 2),  # a stale attempt's failure hook leaves the row alone
    ("fail", "A", True, "failed", 2),
    ("claim", "A", False, "failed", 2),
    ("heartbeat", "A", False, "failed", 2),
    ("complete", "A", False, "failed", 2),
    ("fail", None, False, "failed", 2),  # ended rows stay ended
]


def test_a_row_is_claimed_once_beats_resumes_with_its_attempt_and_fails_once(kind: Kind) -> None:
    row = kind.make()
    attempts = {"A": str(kind.get(row, "attempt")), "B": str(uuid.uuid4()), None: None}
    first_start = None
    for step, who, returns, status, tries in LIFE:
        attempt = attempts[who]
        if step == "fall silent":
            kind.set(row, heartbeat=timezone.now() - LONG_AGO)
            result = None
        elif step == "fail":
            result = kind.job.fail(row.pk, attempt)
        else:
            assert attempt is not None
            result = getattr(kind.job, step)(row.pk, attempt)

        assert result is returns, (step, who)
        assert kind.get(row, "status") == getattr(kind.job, status), (step, who)
        assert kind.get(row, "tries") == tries, (step, who)
        first_start = first_start or kind.get(row, "started")
        assert kind.get(row, "started") == first_start  # a resume keeps the clock of the first start
    assert kind.get(row, "finished") is not None


def test_a_completed_row_writes_its_fields_and_can_no_longer_fail(kind: Kind) -> None:
    row = kind.make()
    attempt = str(kind.get(row, "attempt"))
    before = timezone.now() - timedelta(seconds=1)

    claimed = kind.job.claim(row.pk, attempt)
    beat = kind.job.heartbeat(row.pk, attempt)
    done = kind.job.complete(row.pk, attempt)

    assert (claimed, beat, done) == (True, True, True)
    assert kind.get(row, "status") == kind.job.done
    assert kind.get(row, "heartbeat") > before
    assert kind.get(row, "finished") > before
    assert kind.job.fail(row.pk, None) is False
    assert kind.get(row, "status") == kind.job.done


def test_a_row_out_of_tries_is_not_claimed_and_a_restart_gives_it_a_new_attempt(kind: Kind) -> None:
    row = kind.make()
    old = str(kind.get(row, "attempt"))
    kind.set(row, tries=kind.job.max_tries())

    refused = kind.job.claim(row.pk, old)
    row.refresh_from_db()
    new = kind.job.restart(row)
    row.save()

    assert refused is False
    assert kind.get(row, "attempt") == new
    assert (kind.get(row, "status"), kind.get(row, "tries"), kind.get(row, "started")) == (
        kind.job.queued,
        0,
        None,
    )
    assert kind.job.claim(row.pk, old) is False
    assert kind.job.claim(row.pk, str(new)) is True


def test_the_sweep_fails_overdue_and_worn_out_rows_resumes_silent_ones_and_resends_lost_messages(
    kind: Kind,
) -> None:
    job, now = kind.job, timezone.now()
    silent, fresh = now - LONG_AGO, now
    rows = {
        "beating": kind.make(status=job.running),
        "silent": kind.make(status=job.running),
        "worn out": kind.make(status=job.running),
        "overdue": kind.make(status=job.running),
        "waiting": kind.make(),
        "lost": kind.make(),
    }
    kind.set(rows["beating"], tries=1, started=fresh, heartbeat=fresh)
    kind.set(rows["silent"], tries=1, started=fresh, heartbeat=silent)
    kind.set(rows["worn out"], tries=job.max_tries(), started=fresh, heartbeat=silent)
    kind.set(
        rows["overdue"], tries=1, started=now - timedelta(seconds=job.deadline_s() + 60), heartbeat=fresh
    )
    kind.set(rows["lost"], queued_since=now - timedelta(seconds=3 * job.lease_s()))
    names = {row.pk: name for name, row in rows.items()}
    sent: list[str] = []
    failed: dict[str, StaleCause] = {}

    def fail(row: models.Model, cause: StaleCause) -> bool:
        failed[names[row.pk]] = cause
        return job.fail(row.pk, None)

    counts = job.sweep(lock="tests.row_jobs.sweep", send=lambda row: sent.append(names[row.pk]), fail=fail)

    assert counts == {"resumed": 1, "requeued": 1, "failed": 2}
    assert sorted(sent) == ["lost", "silent"]
    assert failed == {"overdue": "timeout", "worn out": "interrupted"}
    expected = {
        "beating": job.running,
        "silent": job.running,  # resumed by its own attempt's message, not by the sweep
        "worn out": job.failed,
        "overdue": job.failed,
        "waiting": job.queued,
        "lost": job.queued,
    }
    assert {name: kind.get(row, "status") for name, row in rows.items()} == expected


def test_a_job_naming_a_field_its_model_lacks_is_refused_when_defined() -> None:
    with pytest.raises(ImproperlyConfigured, match="ModelVersion has no field 'attempt'"):
        RowJob(
            model=ModelVersion,
            queued="registered",
            running="converting",
            done="ready",
            failed="failed",
            lease_s=lambda: 60.0,
            deadline_s=lambda: 600.0,
            max_tries=lambda: 3,
        )
