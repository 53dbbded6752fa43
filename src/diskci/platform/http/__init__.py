"""The FastAPI application: action routes, the webhook receiver, health, netboot."""
