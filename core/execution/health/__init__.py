"""The worker's health, as others see it: presence in Redis, heartbeats to the supervisor, the hub
outage gate, and broker logins the broker refuses."""
