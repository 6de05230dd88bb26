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
    *,
    recreate_wrong: bool = False,
) -> None:
    """Create every topic in `names` (existing ones are kept) and check their partition counts.

    `recreate_wrong` deletes and recreates a topic with the wrong count: only right after the
    embedded broker restarted empty, when a reconnecting client may have had it auto-created.
    """
    wanted = list(names)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-infra-topics")
    try:
        created = _create(admin, wanted, partitions, replication_factor)
        wrong = _wrong_counts(admin, wanted, partitions)
        if wrong and recreate_wrong:
            log.warning("topics auto-created with wrong partition counts, recreating %s", wrong)
            admin.delete_topics(list(wrong))
            created += _create(admin, list(wrong), partitions, replication_factor)
            wrong = _wrong_counts(admin, wanted, partitions)
    finally:
        admin.close()
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
        len(wanted) - len(set(created)),
    )


def _create(
    admin: KafkaAdminClient, names: list[str], partitions: int, replication_factor: int
) -> list[str]:
    settings = {"num_partitions": partitions, "replication_factor": replication_factor}
    response = admin.create_topics({name: settings for name in names}, raise_errors=False)
    created = []
    for result in response["topics"]:
        code = result["error_code"]
        if code == TopicAlreadyExistsError.errno:
            continue
        if code != NoError.errno:
            message = result["error_message"]
            raise for_code(code)(f"cannot create topic {result['name']}: {message}")
        created.append(result["name"])
    return created


def _wrong_counts(admin: KafkaAdminClient, names: list[str], partitions: int) -> dict[str, int]:
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    return {name: counts.get(name, 0) for name in names if counts.get(name) != partitions}
