"""Webhooks API: subscriptions, their delivery log, redeliver, ping. Every write calls one service."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments.webhooks import serializers as s
from deployments.webhooks import services
from deployments.webhooks.models import Webhook, WebhookDelivery


class WebhookListView(generics.ListAPIView[Webhook]):
    """List the subscriptions you manage; create one (the answer shows its secret, once)."""

    serializer_class = s.WebhookOutput

    def get_queryset(self) -> QuerySet[Webhook]:
        return services.webhooks_for(self.request.user)

    @extend_schema(request=s.WebhookInput, responses={201: s.WebhookCreatedOutput})
    def post(self, request: Request) -> Response:
        data = s.WebhookInput(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = services.create_webhook(spec=data.spec(), actor=request.user)
        return Response(s.WebhookCreatedOutput(webhook).data, status=201)


class WebhookDetailView(APIView):
    """Read, replace (the secret is kept when left out) or delete one subscription."""

    @extend_schema(responses=s.WebhookOutput)
    def get(self, request: Request, webhook_id: int) -> Response:
        return Response(s.WebhookOutput(services.get_webhook(webhook_id, request.user)).data)

    @extend_schema(request=s.WebhookInput, responses=s.WebhookOutput)
    def put(self, request: Request, webhook_id: int) -> Response:
        webhook = services.get_webhook(webhook_id, request.user)
        data = s.WebhookInput(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = services.update_webhook(
            webhook=webhook, spec=data.spec(secret=webhook.secret), actor=request.user
        )
        return Response(s.WebhookOutput(webhook).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, webhook_id: int) -> Response:
        services.delete_webhook(webhook=services.get_webhook(webhook_id, request.user), actor=request.user)
        return Response(status=204)


class PingView(APIView):
    """Queue a ``ping`` event to the subscription; its delivery shows in the log."""

    @extend_schema(request=None, responses={202: s.DeliveryOutput})
    def post(self, request: Request, webhook_id: int) -> Response:
        webhook = services.get_webhook(webhook_id, request.user)
        return Response(
            s.DeliveryOutput(services.ping_webhook(webhook=webhook, actor=request.user)).data, status=202
        )


class DeliveryListView(generics.ListAPIView[WebhookDelivery]):
    """A subscription's delivery log, newest first: status code, latency, attempts, next retry."""

    serializer_class = s.DeliveryOutput
    cursor_ordering = "-created_at"

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        webhook = services.get_webhook(self.kwargs["webhook_id"], self.request.user)
        return WebhookDelivery.objects.filter(webhook=webhook).order_by("-created_at", "-id")


class RedeliverView(APIView):
    """Send a delivery's event again, as a new delivery with the same event id."""

    @extend_schema(request=None, responses={202: s.DeliveryOutput})
    def post(self, request: Request, webhook_id: int, delivery_id: int) -> Response:
        webhook = services.get_webhook(webhook_id, request.user)
        again = services.redeliver(delivery=services.get_delivery(webhook, delivery_id), actor=request.user)
        return Response(s.DeliveryOutput(again).data, status=202)
