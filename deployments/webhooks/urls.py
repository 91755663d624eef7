"""Webhook routes under /api/v1/."""

from django.urls import path

from deployments.webhooks import api

urlpatterns = [
    path("webhooks/", api.WebhookListView.as_view(), name="webhook-list"),
    path("webhooks/<int:webhook_id>/", api.WebhookDetailView.as_view(), name="webhook-detail"),
    path("webhooks/<int:webhook_id>/ping/", api.PingView.as_view(), name="webhook-ping"),
    path("webhooks/<int:webhook_id>/deliveries/", api.DeliveryListView.as_view(), name="webhook-deliveries"),
    path(
        "webhooks/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver/",
        api.RedeliverView.as_view(),
        name="webhook-redeliver",
    ),
]
