from django.urls import path

from webhooks import apis

urlpatterns = [
    path("webhooks/secret", apis.WebhookSecretApi.as_view(), name="webhook-secret"),
    path("webhooks/deliveries", apis.WebhookDeliveryListApi.as_view(), name="webhook-delivery-list"),
    path(
        "webhooks/deliveries/<int:delivery_id>/resend",
        apis.WebhookDeliveryResendApi.as_view(),
        name="webhook-delivery-resend",
    ),
]
