"""The AI queues, by priority, in the order workers drain them: the one list, read by settings (RQ_QUEUES,
jobs.queues) and by `make run`'s supervisor (aipb.run), which starts before Django's settings exist."""

AI_QUEUES = {"high": "ai-high", "normal": "ai-default", "low": "ai-low"}

# Webhook deliveries (webhooks.delivery): a queue of their own, so a slow receiver never waits behind AI jobs
# and the AI queues' sizes count AI jobs only.
WEBHOOK_QUEUE = "ai-webhooks"
