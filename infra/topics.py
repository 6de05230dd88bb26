"""Explicit topic creation.

Run it before any service starts: the embedded broker auto-creates an unknown topic with 4
partitions as soon as a client asks for it, and the partition count decides each customer's
partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.errors import NoError, TopicAlreadyExistsError, for_code

from events import topics

log = logging.getLogger(__name__)


class TopicMismatchError(RuntimeError):
    """A topic exists with a different partition count than the platform expects."""


def ensure_topics(
    bootstrap: str,
    partitions: int,
    replication_factor: int = 1,
    names: Iterable[str] = topics.ALL,
) -> None:
    """Create every topic in `names` (existing ones are kept) and check their partition counts."""
    wanted = list(names)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-infra-topics")
    try:
        response = admin.create_topics(
            {
                name: {"num_partitions": partitions, "replication_factor": replication_factor}
                for name in wanted
            },
            raise_errors=False,
        )
        created = []
        for result in response["topics"]:
            code = result["error_code"]
            if code == TopicAlreadyExistsError.errno:
                continue
            if code != NoError.errno:
                message = result["error_message"]
                raise for_code(code)(f"cannot create topic {result['name']}: {message}")
            created.append(result["name"])
        counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}
    finally:
        admin.close()
    wrong = {name: counts.get(name) for name in wanted if counts.get(name) != partitions}
    if wrong:
        raise TopicMismatchError(
            f"topics on {bootstrap} have partition counts {wrong}, expected {partitions}: "
            "delete and recreate them (the partition count decides each customer's partition)"
        )
    log.info(
        "topics ensured bootstrap=%s partitions=%d created=%s existing=%d",
        bootstrap,
        partitions,
        ",".join(created) or "-",
        len(wanted) - len(created),
    )
