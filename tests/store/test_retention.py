"""Retention: the store consumer deletes what is no longer anyone's, in bounded batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.settings import Settings
from gateway.storage.blobs import (
    BlobStoreError,
    FilesystemBlobStore,
    run_input_key,
    run_output_key,
)
from store.models import Agent
from store.packages import get_package, package_for_run
from store.retention import (
    RetentionPolicy,
    expire_idempotency_keys,
    expire_input_files,
    expire_packages,
    expire_runs,
)
from store.run_files import INPUT, OUTPUT, insert_run_file
from tests.support.consumers import ConsumerFactory
from tests.support.polling import until
from tests.support.store_runs import new_run


async def bind(db: asyncpg.Pool, agent: Agent, *, age: str) -> str:
    """An Idempotency-Key binding of a new run, made ``age`` ago; its key."""
    key = uuid.uuid4().hex
    await db.execute(
        """INSERT INTO idempotency_keys (agent_id, key, request_hash, run_id, created_at)
           VALUES ($1, $2, '\\x00', $3, now() - $4::text::interval)""",
        agent.id,
        key,
        await new_run(db, agent),
        age,
    )
    return key


async def keys_left(db: asyncpg.Pool, agent: Agent) -> set[str]:
    rows = await db.fetch("SELECT key FROM idempotency_keys WHERE agent_id = $1", agent.id)
    return {row["key"] for row in rows}


async def until_unbound(db: asyncpg.Pool, agent: Agent, key: str, *, bound_s: float = 10.0) -> None:
    """Return once ``key``'s binding has been deleted; fail after ``bound_s``."""

    async def unbound() -> bool:
        return key not in await keys_left(db, agent)

    await until(unbound, bound_s=bound_s, what="no retention turn deleted the expired key")


async def test_idempotency_keys_past_their_24_hours_are_deleted_in_bounded_batches(
    db: asyncpg.Pool, agent: Agent
) -> None:
    expired = {await bind(db, agent, age="25 hours") for _ in range(3)}
    young = await bind(db, agent, age="23 hours")

    assert await expire_idempotency_keys(db, limit=2) == 2
    assert len(await keys_left(db, agent) & expired) == 1
    while await expire_idempotency_keys(db, limit=2):
        pass

    assert await keys_left(db, agent) == {young}
    # The runs they named stay: only the binding expired.
    assert await db.fetchval("SELECT count(*) FROM runs WHERE agent_id = $1", agent.id) == 4


async def test_the_consumer_expires_idempotency_keys_and_counts_them(
    db: asyncpg.Pool, agent: Agent, make_consumer: ConsumerFactory
) -> None:
    old = await bind(db, agent, age="2 days")
    young = await bind(db, agent, age="1 minute")

    consumer = await make_consumer(reap_every_s=0.05)
    await until_unbound(db, agent, old)
    # The turn counts the rows once its statement has answered, a moment after they are gone.
    await until(lambda: consumer.stats.expired.get("idempotency_keys", 0) >= 1, bound_s=10.0)

    assert await keys_left(db, agent) == {young}
    assert consumer.stats.expired.get("idempotency_keys", 0) >= 1


# Runs, input files and packages (settings RETENTION_*_DAYS; off by default).


async def put_blob(blobs: FilesystemBlobStore, key: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"caller's bytes"

    await blobs.put(key, chunks(), content_type="text/plain")


async def stored_file(
    db: asyncpg.Pool, blobs: FilesystemBlobStore, agent: Agent, run_id: int, *, kind: str, age: str
) -> str:
    """A stored file of ``run_id`` (its row and its blob), stored ``age`` ago; its key."""
    position = await db.fetchval("SELECT count(*) FROM run_files WHERE run_id = $1", run_id)
    key = (run_input_key if kind == INPUT else run_output_key)(run_id, position, "doc.txt")
    await put_blob(blobs, key)
    await insert_run_file(
        db,
        run_id=run_id,
        org_id=agent.org_id,
        field="doc",
        position=position,
        name="doc.txt",
        mime_type="text/plain",
        size_bytes=14,
        sha256="0" * 64,
        blob_key=key,
        kind=kind,
    )
    await db.execute(
        "UPDATE run_files SET created_at = now() - $2::text::interval WHERE blob_key = $1",
        key,
        age,
    )
    return key


async def ended_run(db: asyncpg.Pool, agent: Agent, *, ago: str, status: str = "completed") -> int:
    """A run of ``agent`` that reached ``status`` ``ago`` (a queued run when ``status`` is)."""
    run_id = await new_run(db, agent)
    await db.execute(
        """UPDATE runs SET status = $2, completed_at = now() - $3::text::interval,
                          updated_at = now() - $3::text::interval
           WHERE id = $1""",
        run_id,
        status,
        ago,
    )
    await db.execute(
        """INSERT INTO applied_events (event_id, run_id, type, changed)
           VALUES ($1, $2, 'completed', true)""",
        uuid.uuid4(),
        run_id,
    )
    return run_id


async def runs_left(db: asyncpg.Pool, agent: Agent) -> set[int]:
    rows = await db.fetch("SELECT id FROM runs WHERE agent_id = $1", agent.id)
    return {row["id"] for row in rows}


def blob_exists(blobs: FilesystemBlobStore, key: str) -> bool:
    return (blobs.root / key).exists()


@pytest.fixture
def blobs(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs")


async def test_terminal_runs_past_their_age_go_with_their_events_files_blobs_and_package(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore
) -> None:
    old = await ended_run(db, agent, ago="3 days")
    old_files = [
        await stored_file(db, blobs, agent, old, kind=INPUT, age="4 days"),
        await stored_file(db, blobs, agent, old, kind=OUTPUT, age="3 days"),
    ]
    await package_for_run(db, run_id=old, org_id=agent.org_id)
    young = await ended_run(db, agent, ago="1 day", status="failed")
    young_file = await stored_file(db, blobs, agent, young, kind=INPUT, age="4 days")
    # In flight however old: never deleted.
    stuck = await new_run(db, agent)
    await db.execute("UPDATE runs SET created_at = now() - interval '30 days' WHERE id = $1", stuck)

    # Other tests' old runs may go too (one database): this agent's tell.
    while await expire_runs(db, blobs, days=2):
        pass

    assert await runs_left(db, agent) == {young, stuck}
    assert not any(blob_exists(blobs, key) for key in old_files)
    assert blob_exists(blobs, young_file)
    for table in ("applied_events", "run_files", "packages"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE run_id = $1", old) == 0
    assert await db.fetchval("SELECT count(*) FROM applied_events WHERE run_id = $1", young) == 1


async def test_runs_are_deleted_in_bounded_batches_oldest_first(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore
) -> None:
    # Older than any other test's run (one database), so that they are first.
    oldest = await ended_run(db, agent, ago="30000 days")
    older = [await ended_run(db, agent, ago="29000 days") for _ in range(2)]

    assert await expire_runs(db, blobs, days=1, limit=1) == 1
    assert oldest not in await runs_left(db, agent)
    assert await expire_runs(db, blobs, days=1, limit=1) == 1
    assert len(await runs_left(db, agent) & set(older)) == 1
    while await expire_runs(db, blobs, days=1, limit=1):
        pass
    assert await runs_left(db, agent) == set()


async def test_a_run_whose_blob_could_not_be_deleted_is_kept_for_the_next_pass(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore
) -> None:
    run_id = await ended_run(db, agent, ago="3 days")
    key = await stored_file(db, blobs, agent, run_id, kind=INPUT, age="3 days")

    class Failing:
        async def delete(self, key: str) -> None:
            raise BlobStoreError("S3 unreachable")

    assert await expire_runs(db, Failing(), days=1) == 0
    assert run_id in await runs_left(db, agent)
    assert blob_exists(blobs, key)

    # A blob already gone counts as deleted: the row goes on the next pass.
    await blobs.delete(key)
    assert await expire_runs(db, blobs, days=1) == 1
    assert run_id not in await runs_left(db, agent)


async def test_input_files_of_ended_runs_past_their_age_are_deleted_with_their_blobs(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore
) -> None:
    done = await ended_run(db, agent, ago="1 hour")
    old = [await stored_file(db, blobs, agent, done, kind=INPUT, age="3 days") for _ in range(3)]
    young = await stored_file(db, blobs, agent, done, kind=INPUT, age="1 day")
    output = await stored_file(db, blobs, agent, done, kind=OUTPUT, age="3 days")
    in_flight = await new_run(db, agent)
    needed = await stored_file(db, blobs, agent, in_flight, kind=INPUT, age="3 days")

    assert await expire_input_files(db, blobs, days=2, limit=2) == 2
    while await expire_input_files(db, blobs, days=2, limit=2):
        pass

    left = {row["blob_key"] for row in await db.fetch("SELECT blob_key FROM run_files")}
    assert not left & set(old)
    assert {young, output, needed} <= left
    assert not any(blob_exists(blobs, key) for key in old)
    assert all(blob_exists(blobs, key) for key in (young, output, needed))
    # The run itself stays.
    assert await runs_left(db, agent) == {done, in_flight}


async def test_packages_not_asked_for_past_their_age_are_deleted_in_bounded_batches(
    db: asyncpg.Pool, agent: Agent
) -> None:
    async def package(age: str) -> uuid.UUID:
        run_id = await ended_run(db, agent, ago="1 hour")
        made = await package_for_run(db, run_id=run_id, org_id=agent.org_id)
        await db.execute(
            "UPDATE packages SET last_requested_at = now() - $2::text::interval WHERE id = $1",
            made.id,
            age,
        )
        return made.id

    old = {await package("8 days") for _ in range(3)}
    young = await package("6 days")

    assert await expire_packages(db, days=7, limit=2) == 2
    while await expire_packages(db, days=7, limit=2):
        pass

    assert [await get_package(db, package_id) for package_id in old] == [None] * 3
    assert await get_package(db, young) is not None
    # The runs stay: only the package (its id) goes.
    assert len(await runs_left(db, agent)) == 4


async def test_runs_input_files_and_packages_are_kept_forever_by_default(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore, make_consumer: ConsumerFactory
) -> None:
    defaults = Settings()
    assert (
        defaults.retention_runs_days,
        defaults.retention_input_files_days,
        defaults.retention_packages_days,
    ) == (0, 0, 0)
    run_id = await ended_run(db, agent, ago="10000 days")
    key = await stored_file(db, blobs, agent, run_id, kind=INPUT, age="10000 days")
    made = await package_for_run(db, run_id=run_id, org_id=agent.org_id)
    await db.execute(
        "UPDATE packages SET last_requested_at = now() - interval '10000 days' WHERE id = $1",
        made.id,
    )

    consumer = await make_consumer(
        reap_every_s=0.02,
        blobs=blobs,
        retention=RetentionPolicy(
            runs_days=defaults.retention_runs_days,
            input_files_days=defaults.retention_input_files_days,
            packages_days=defaults.retention_packages_days,
        ),
    )
    # Witnesses: an expired Idempotency-Key goes first in every retention turn, so once a
    # second one is gone, a whole turn has looked at the runs, files and packages.
    for _turn in range(2):
        witness = await bind(db, agent, age="2 days")
        await until_unbound(db, agent, witness)

    assert run_id in await runs_left(db, agent)  # beside the witnesses' own young runs
    assert blob_exists(blobs, key)
    assert await get_package(db, made.id) is not None
    assert await db.fetchval("SELECT count(*) FROM run_files WHERE run_id = $1", run_id) == 1
    assert not {"runs", "input_files", "packages"} & set(consumer.stats.expired)
    # Not left for the other tests' retention to find.
    await expire_runs(db, blobs, days=9000)


async def test_the_consumer_applies_the_retention_settings_and_counts_each_kind(
    db: asyncpg.Pool, agent: Agent, blobs: FilesystemBlobStore, make_consumer: ConsumerFactory
) -> None:
    gone_run = await ended_run(db, agent, ago="40 days")
    gone_run_file = await stored_file(db, blobs, agent, gone_run, kind=OUTPUT, age="40 days")
    kept_run = await ended_run(db, agent, ago="1 day")
    gone_input = await stored_file(db, blobs, agent, kept_run, kind=INPUT, age="10 days")
    packaged = await ended_run(db, agent, ago="1 day")
    made = await package_for_run(db, run_id=packaged, org_id=agent.org_id)
    await db.execute(
        "UPDATE packages SET last_requested_at = now() - interval '3 days' WHERE id = $1", made.id
    )

    consumer = await make_consumer(
        reap_every_s=0.05,
        blobs=blobs,
        retention=RetentionPolicy(runs_days=30, input_files_days=7, packages_days=2),
    )
    for _ in range(200):
        if {"runs", "input_files", "packages"} <= set(consumer.stats.expired):
            break
        await asyncio.sleep(0.02)

    assert await runs_left(db, agent) == {kept_run, packaged}
    assert not blob_exists(blobs, gone_run_file)
    assert not blob_exists(blobs, gone_input)
    assert await get_package(db, made.id) is None
    assert all(consumer.stats.expired.get(k, 0) >= 1 for k in ("runs", "input_files", "packages"))
