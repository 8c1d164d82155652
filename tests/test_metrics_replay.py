"""How a 0-RTT refusal by the strike register reaches the metrics of *its* connection."""

from __future__ import annotations

import contextvars
import os

import trio

from proxy.tlsconfig import (
    ObservedRegister,
    _refusal,
    observed_register,
    reset_early_data_refusal,
    take_early_data_refusal,
)
from proxy.workers import SharedReplayRegister
from tls13.tickets import ReplayRegister


def test_a_replayed_key_is_a_replay_and_a_full_register_is_not() -> None:
    register = observed_register(ReplayRegister(window_seconds=10, max_entries=2))
    reset_early_data_refusal()
    assert register.check_and_add(b"ticket-1", 100.0)
    assert take_early_data_refusal() is None
    assert not register.check_and_add(b"ticket-1", 101.0)
    assert take_early_data_refusal() == "replay"
    assert take_early_data_refusal() is None  # taken once
    assert register.check_and_add(b"ticket-2", 102.0)
    assert not register.check_and_add(b"ticket-3", 103.0)
    assert take_early_data_refusal() == "full"
    # The engine's register cannot say whether a key is in it, so while it is full every
    # refusal counts as "full" (with 100,000 entries that is an overload, not the norm).
    assert not register.check_and_add(b"ticket-1", 104.0)
    assert take_early_data_refusal() == "full"


def test_the_shared_register_says_why_it_refused() -> None:
    shared = SharedReplayRegister.create(slots=1)
    register = observed_register(shared)
    try:
        reset_early_data_refusal()
        assert register.check_and_add(b"a", 50.0)
        assert not register.check_and_add(b"a", 51.0)
        assert take_early_data_refusal() == "replay"
        assert not register.check_and_add(b"b", 52.0)  # its only slot is taken
        assert take_early_data_refusal() == "full"
    finally:
        os.close(shared.fd)


def test_wrapping_is_idempotent_and_keeps_the_window() -> None:
    inner = ReplayRegister(window_seconds=7, max_entries=10)
    once = observed_register(inner)
    assert observed_register(once) is once
    assert isinstance(once, ObservedRegister) and once.window == 7


def test_a_refusal_stays_with_the_connection_task_that_caused_it() -> None:
    register = observed_register(ReplayRegister(window_seconds=10, max_entries=100))
    assert register.check_and_add(b"ticket", 1.0)
    seen: dict[str, str | None] = {}

    async def connection(name: str, key: bytes, checked: trio.Event, wait: trio.Event) -> None:
        reset_early_data_refusal()
        register.check_and_add(key, 2.0)
        checked.set()
        await wait.wait()  # the other connection checks meanwhile
        seen[name] = take_early_data_refusal()

    async def main() -> None:
        first, second = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection, "replayer", b"ticket", first, second)
            await first.wait()
            nursery.start_soon(connection, "fresh", b"other", second, first)

    trio.run(main)
    assert seen == {"replayer": "replay", "fresh": None}


def test_a_connection_without_a_refusal_writes_nothing_to_its_context() -> None:
    # Each set copies the task's context mapping, kept for the connection's whole life.
    context = contextvars.Context()
    assert context.run(take_early_data_refusal) is None
    context.run(reset_early_data_refusal)
    assert _refusal not in context
    register = observed_register(ReplayRegister(window_seconds=10, max_entries=100))
    assert register.check_and_add(b"ticket", 1.0)
    assert not context.run(register.check_and_add, b"ticket", 2.0)
    context.run(reset_early_data_refusal)
    assert context[_refusal] is None and context.run(take_early_data_refusal) is None
