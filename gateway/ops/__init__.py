"""What operators read: Prometheus metrics, health and readiness, the HTTP responder, logging."""
