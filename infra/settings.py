"""One typed settings object, read from the environment."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import phonenumbers
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Platform settings. Defaults suit the embedded stack started by `crm up`."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Path("./var")
    topic_partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # The embedded broker holds a group join for about half the session timeout.
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    max_event_bytes: int = Field(default=64 * 1024, ge=1024)
    recorder_batch_size: int = Field(default=2000, ge=1)
    recorder_group: str = "crm-recorder"
    # A merge into a customer not recorded yet waits this long for the customer's first event
    # (on another partition, maybe read less far) before it is refused as unknown_customer.
    merge_wait_seconds: float = Field(default=10.0, ge=0)
    projector_group: str = "crm-projector"
    # Customers whose folded views the projector keeps in memory, per read model.
    projector_cache_size: int = Field(default=100_000, ge=0)
    # Desertion: average monthly net spend over the last `recent` complete months at most `ratio`
    # of the average over the `baseline` months before them, that average at least `minimum`.
    desertion_recent_months: int = Field(default=4, ge=1)
    desertion_baseline_months: int = Field(default=6, ge=1)
    desertion_ratio: Decimal = Field(default=Decimal("0.6"), gt=0, lt=1)
    desertion_minimum: Decimal = Field(default=Decimal("100"), ge=0)
    # History is being loaded (a demo, a bulk import, a rebuild) while at least
    # `desertion_catch_up_events` events that occurred over `desertion_history_seconds` ago arrive
    # within `desertion_settle_seconds`; customers it touches are judged once it has stopped.
    desertion_history_seconds: float = Field(default=3600.0, gt=0)
    desertion_settle_seconds: float = Field(default=5.0, gt=0)
    desertion_catch_up_events: int = Field(default=100, ge=1)
    # A purchase or refund that occurred over `desertion_history_seconds` ago is judged this much
    # later (it may be the first event of a catch-up).
    desertion_hold_seconds: float = Field(default=0.5, ge=0)
    # Complaints: how long a complaint may stay open, by severity (from when it was filed or
    # reopened), before `complaint.sla.breached`.
    sla_high_hours: float = Field(default=24.0, gt=0)
    sla_medium_hours: float = Field(default=72.0, gt=0)
    sla_low_hours: float = Field(default=168.0, gt=0)
    # A product is spiking when at least `spike_minimum` complaints about it were filed in the
    # rolling `spike_window_hours`, and at least `spike_factor` times its usual number per window
    # over the `spike_baseline_days` before.
    spike_minimum: int = Field(default=5, ge=1)
    spike_window_hours: float = Field(default=24.0, gt=0)
    spike_baseline_days: float = Field(default=28.0, gt=0)
    spike_factor: Decimal = Field(default=Decimal(3), gt=0)
    # How often the projector's clock looks for complaints past their SLA and follow-ups past
    # their due time.
    deadline_check_seconds: float = Field(default=1.0, gt=0)
    # Post-purchase follow-up: a purchase whose total is above its currency's threshold (JSON,
    # e.g. CRM_FOLLOWUP_PURCHASE_THRESHOLDS='{"EUR": "500", "USD": "550"}'; {} turns it off)
    # schedules a follow-up call `followup_purchase_delay_days` after it occurred.
    followup_purchase_thresholds: dict[str, Decimal] = Field(
        default_factory=lambda: {"EUR": Decimal(500)}
    )
    followup_purchase_delay_days: float = Field(default=7.0, gt=0)
    followup_purchase_assignee: str | None = None
    # Webhooks: a delivery is retried with exponential backoff for at most `webhook_retry_seconds`.
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_seconds: float = Field(default=3600.0, gt=0)
    webhook_backoff_seconds: float = Field(default=1.0, gt=0)
    webhook_max_backoff_seconds: float = Field(default=300.0, gt=0)
    webhook_concurrency_per_subscription: int = Field(default=4, ge=1)
    # Screen pop: phone numbers without a country code are read in this region (ISO 3166
    # alpha-2); the value tiers' cut points are recomputed this often.
    phone_region: str = "DE"
    tier_refresh_seconds: float = Field(default=60.0, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"expected an ISO 3166 alpha-2 region such as 'DE', got {value!r}")
        return region

    @property
    def bootstrap(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set and no embedded broker runs")
        return self.kafka_bootstrap_servers

    @property
    def dsn(self) -> str:
        if not self.database_url:
            raise RuntimeError("DATABASE_URL is not set and no embedded PostgreSQL runs")
        return self.database_url
