"""Serving advice from the measured profile: the choice, the numbers behind it, the shortfall."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from dashboard.advice import advise
from deployments.models import Variant
from deployments.services.batching import propose_batching
from deployments.services.measurements import MeasuredCell, config_key
from inference_worker.contracts.batching import BATCHING, encode_batching
from tests.support.versions import ready_version

REPORT: dict[str, Any] = {
    "profile": {
        "batches": [
            {"batch_size": 1, "onnxruntime_ms": 1.0},
            {"batch_size": 4, "onnxruntime_ms": 2.0},
            {"batch_size": 16, "onnxruntime_ms": 5.0},
            {"batch_size": 64, "onnxruntime_ms": 16.0},
        ]
    },
    "protocols": {"per_request_ms": {"http_json": 0.2, "http_binary": 0.02, "grpc": 0.03}},
}


def test_the_smallest_batch_meeting_budget_and_target_is_chosen_with_the_cheapest_protocol() -> None:
    advice = advise(REPORT, budget_ms=20, target_rps=1500)

    assert advice.choice is not None
    assert advice.choice.batch_size == 4  # 4 / (2.0 + 4 x 0.02) ms = 1,923 req/s
    assert advice.choice.protocol == "http_binary"
    assert advice.shortfall == ""
    assert "1,923 req/s" in advice.explanation
    assert advice.as_dict()["choice"]["protocol_label"] == "HTTP binary"


def test_the_advice_says_its_throughput_is_a_prediction_from_compute_and_codec_not_a_measurement() -> None:
    chosen = advise(REPORT, budget_ms=20, target_rps=1500)
    short = advise(REPORT, budget_ms=40, target_rps=10_000)

    assert "predicted to sustain at most 1,923 req/s" in chosen.explanation
    assert "not measured" in chosen.explanation
    assert "predicted to reach at most 3,704 req/s" in short.shortfall
    assert "not measured" in short.shortfall
    assert chosen.as_dict()["throughput_basis"].startswith("Predicted, not measured")


def test_a_latency_budget_below_batch_one_says_by_how_much_it_falls_short() -> None:
    advice = advise(REPORT, budget_ms=1.5, target_rps=10)

    assert advice.choice is None
    assert advice.shortfall.startswith("Latency falls short")
    assert "0.52 ms over the 1.5 ms budget" in advice.shortfall


def test_an_unreachable_throughput_names_the_best_reachable_figure_and_the_replicas_needed() -> None:
    advice = advise(REPORT, budget_ms=40, target_rps=10_000)

    assert advice.choice is not None
    assert advice.choice.batch_size == 64
    assert advice.shortfall.startswith("Throughput falls short")
    assert "3,704 req/s" in advice.shortfall  # 64 / (16 + 64 x 0.02) ms
    assert advice.replicas == 3


def test_without_a_profile_the_advice_asks_for_a_conversion() -> None:
    advice = advise({}, budget_ms=50, target_rps=100)

    assert advice.choice is None
    assert "convert the version again" in advice.shortfall


@pytest.mark.parametrize("budget", [5.0, 12.0, 50.0])
def test_every_option_reports_its_measured_inputs(budget: float) -> None:
    options = advise(REPORT, budget_ms=budget, target_rps=100).options

    assert len(options) == 12
    for option in options:
        assert option.worst_latency_ms == pytest.approx(
            option.queue_delay_ms + 2 * option.batch_latency_ms + option.codec_ms
        )


def test_the_advice_and_the_deploy_form_follow_one_rule() -> None:
    advice = advise(REPORT, budget_ms=20, target_rps=1500)
    proposal = propose_batching(REPORT, latency_budget_ms=20, target_rps=1500)

    assert advice.choice is not None
    assert advice.batching == proposal.batching
    assert (advice.choice.protocol, advice.choice.batch_size) == (proposal.protocol, 4)
    assert advice.choice.queue_delay_ms == proposal.batching.max_queue_delay_ms


@pytest.mark.django_db
def test_the_advice_s_link_deploys_exactly_the_advised_options(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    version = ready_version(owner, report=REPORT)
    advice = advise(REPORT, budget_ms=20, target_rps=1500)
    assert advice.batching is not None
    assert advice.deploy is not None
    without_target = propose_batching(REPORT, latency_budget_ms=20).batching
    assert without_target.max_batch_size > advice.batching.max_batch_size  # the link used to mix the two
    web = web_as(owner)
    url = (
        reverse("deployments:create", args=[version.model.name, version.version])
        + "?"
        + urlencode(advice.deploy)
    )

    page = web.get(url)
    form = page.context["form"]
    assert {name: str(form.initial[name]) for name in BATCHING} == {
        name: advice.deploy[name] for name in BATCHING
    }
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert csrf
    posted = {
        **advice.deploy,
        "name": "fraud",
        "version": version.version,
        "device": "cpu",
        "backend": "process",
    }
    created = web.post(url, {**posted, "description": "", "csrfmiddlewaretoken": csrf.group(1)})

    assert created.status_code == 302, created.content.decode()[:2000]
    assert Variant.objects.get(deployment__name="fraud").batching == advice.batching


def test_the_advice_api_answers_the_choice_and_every_option_in_one_shape(owner: User) -> None:
    from rest_framework.test import APIClient

    ready_version(owner, report=REPORT)
    api = APIClient()
    api.force_authenticate(owner)

    answer = api.get("/api/v1/models/cnn/versions/1/advice/?latency_budget_ms=20&target_rps=1500")

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["choice"] is not None
    assert body["choice"]["meets"] is True
    assert set(body["choice"]) == set(body["options"][0])
    assert body["throughput_basis"].startswith("Predicted, not measured")


@pytest.mark.django_db
def test_the_advice_quotes_the_version_s_measured_cold_start_once_a_worker_was_ready(owner: User) -> None:
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.test import APIClient

    from deployments.models import Worker

    version = ready_version(owner, report=REPORT)
    api = APIClient()
    api.force_authenticate(owner)
    url = "/api/v1/models/cnn/versions/1/advice/?latency_budget_ms=20&target_rps=1500"
    assert api.get(url).json()["cold_start_s"] is None  # no worker of it has started

    body = {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]}
    assert api.post("/api/v1/deployments/", body, format="json").status_code == 201
    variant = Variant.objects.get(deployment__name="cnn-prod")
    start = timezone.now() - timedelta(minutes=5)
    for seconds in (2.0, 9.0, 4.0):  # the median, not the mean (5.0) nor the last
        Worker.objects.create(
            variant=variant,
            version=version,
            backend="process",
            started_at=start,
            ready_at=start + timedelta(seconds=seconds),
        )

    assert api.get(url).json()["cold_start_s"] == 4.0


def _cells(batching: Any, protocol: str, figures: list[tuple[int, float, float]]) -> list[MeasuredCell]:
    """Measured cells of one configuration: (clients, req/s, p99 ms) each."""
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    return [
        MeasuredCell(
            config_key=config_key(batching),
            batching=encode_batching(batching),
            max_batch_size=batching.max_batch_size,
            instances=batching.instances,
            protocol=protocol,
            concurrency=clients,
            throughput_rps=rps,
            p50_ms=p99 / 2,
            p99_ms=p99,
            errors=0,
            measured_at=at,
            machine="box, Some CPU, 2 cores",
        )
        for clients, rps, p99 in figures
    ]


def test_measured_cells_of_the_chosen_batching_set_its_throughput_and_the_replicas() -> None:
    chosen = propose_batching(REPORT, latency_budget_ms=20, target_rps=1500)
    cells = _cells(chosen.batching, "http_binary", [(1, 400.0, 3.0), (16, 900.0, 12.0), (64, 1100.0, 35.0)])

    advice = advise(REPORT, budget_ms=20, target_rps=1500, measured=cells)

    assert advice.choice is not None
    assert advice.choice.batch_size == 4  # the rule's choice, as the deploy form's
    assert advice.batching == chosen.batching
    assert advice.choice.measured_throughput_rps == 900.0  # 1,100 req/s took p99 35 ms > 20
    assert advice.choice.measured_p99_ms == 12.0
    assert advice.choice.measured_concurrency == 16
    assert advice.replicas == 2  # 1,500 / 900
    assert advice.deploy is not None
    assert advice.deploy["replicas"] == "2"
    assert advice.shortfall.startswith("Throughput falls short: batch 4 over HTTP binary, measured on this")
    assert "one worker served 900 req/s with p99 12.00 ms at 16 concurrent clients" in advice.shortfall
    assert "predicted from compute and codec alone: 1,923" in advice.shortfall
    body = advice.as_dict()
    assert body["measured"] is True
    assert body["throughput_basis"].startswith(
        "Measured on this machine at 2026-12-01 09:30 UTC (box, Some CPU"
    )


def test_a_measured_worker_meeting_the_target_needs_one_replica() -> None:
    chosen = propose_batching(REPORT, latency_budget_ms=20, target_rps=500)
    cells = _cells(chosen.batching, chosen.protocol or "", [(1, 600.0, 2.0)])

    advice = advise(REPORT, budget_ms=20, target_rps=500, measured=cells)

    assert advice.shortfall == ""
    assert advice.replicas == 1
    assert (
        "measured on this machine at 2026-12-01 09:30 UTC: one worker served 600 req/s" in advice.explanation
    )


def test_a_measured_p99_over_the_budget_at_every_concurrency_is_a_latency_shortfall() -> None:
    chosen = propose_batching(REPORT, latency_budget_ms=20, target_rps=1500)
    cells = _cells(chosen.batching, "http_binary", [(1, 300.0, 25.0), (16, 800.0, 60.0)])

    advice = advise(REPORT, budget_ms=20, target_rps=1500, measured=cells)

    assert advice.choice is not None
    assert advice.choice.meets_latency is False
    assert advice.shortfall.startswith("Latency falls short: measured on this machine")
    assert "p99 25.00 ms even at 1 concurrent client(s), over the 20 ms budget" in advice.shortfall


def test_cells_of_other_options_leave_the_choice_predicted() -> None:
    chosen = propose_batching(REPORT, latency_budget_ms=20, target_rps=1500)
    two_instances = _cells(replace(chosen.batching, instances=2), "http_binary", [(16, 2000.0, 5.0)])
    over_json = _cells(chosen.batching, "http_json", [(16, 700.0, 5.0)])

    advice = advise(REPORT, budget_ms=20, target_rps=1500, measured=two_instances + over_json)

    assert advice.choice is not None
    assert advice.choice.measured is False
    assert advice.as_dict()["throughput_basis"].startswith("Predicted, not measured")
    json_option = next(o for o in advice.options if (o.protocol, o.batch_size) == ("http_json", 4))
    assert json_option.measured_throughput_rps == 700.0  # shown beside its prediction
    assert len(advice.as_dict()["measurements"]) == 2
