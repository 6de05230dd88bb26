"""Kafka topic names of the platform (see README, "Topics")."""

TOUCHPOINTS = "crm.touchpoints"
"""Raw intake from departments; key = customer_id."""

EVENTS = "crm.events"
"""Recorded events, relayed from the event store; key = customer_id."""

ALERTS = "crm.alerts"
"""Alerts for subscribers; key = customer_id."""

DEADLETTER = "crm.deadletter"
"""Rejected intake: original bytes plus crm.error.* headers."""

ALL = (TOUCHPOINTS, EVENTS, ALERTS, DEADLETTER)
