"""The connection controller with an injected clock: grow, hold, shrink, honour Retry-After."""

from __future__ import annotations

import pytest

from sa1b_cli.download.controller import (
    ConnectionController,
    ControllerSettings,
    IdleCores,
    ThreadLoad,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def busy(controller: ConnectionController) -> None:
    while controller.over_limit():  # those over the limit gave their slots back meanwhile
        controller.release()
    while controller.try_acquire():  # every slot in use, as when the link has work for all
        pass


def step(controller: ConnectionController, clock: Clock, rate: float) -> None:
    """One measured interval at ``rate``; after a growth step, the settling interval first."""
    busy(controller)
    if controller.steps.settling:
        clock.now += 1.0
        controller.counted(int(rate))
        streaming, per_connection = controller.streaming, controller.per_connection
        controller.streaming = controller.active  # the step's connections receive by now
        controller.tick()
        controller.streaming, controller.per_connection = streaming, per_connection
        assert not controller.steps.settling
    clock.now += 1.0
    controller.counted(int(rate))
    controller.tick()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **kw) -> ConnectionController:
    settings = ControllerSettings(**{"initial": 4, "ceiling": 64, **kw})
    return ConnectionController(settings, clock=clock)


def test_it_grows_while_throughput_rises(clock):
    controller = make(clock)
    limits = []
    for rate in (100, 200, 400, 800):  # each doubling of connections doubles throughput
        step(controller, clock, rate)
        limits.append(controller.limit)
    assert limits == [8, 16, 32, 64]
    step(controller, clock, 1600)
    assert controller.limit == 64  # the user's ceiling


def test_it_holds_when_a_step_brings_nothing(clock):
    controller = make(clock, hold_seconds=4.5)
    step(controller, clock, 100)
    step(controller, clock, 200)
    assert controller.limit == 16
    step(controller, clock, 205)  # 16 connections carry no more than 8 did
    assert controller.limit == 8
    for _ in range(4):
        step(controller, clock, 200)
        assert controller.limit == 8  # held for 4.5 s
    step(controller, clock, 200)  # the hold is over: probe again
    assert controller.limit == 16


def test_a_step_is_judged_only_once_most_of_its_connections_receive(clock):
    controller = make(clock, growth=4.0)
    step(controller, clock, 100)
    assert controller.limit == 16 and controller.steps.settling
    busy(controller)
    controller.streaming = 4  # the 12 new ones wait for their first byte (2 round trips away)
    for _ in range(5):
        clock.now += 0.2
        controller.counted(20)  # only the old connections' bytes: not a fruitless step
        controller.tick()
        assert controller.limit == 16 and controller.steps.settling
    controller.streaming = 16
    clock.now += 0.2
    controller.counted(80)
    controller.tick()  # they receive now: the interval from here on is judged
    assert controller.steps.settling is False
    clock.now += 1.0
    controller.counted(400)
    controller.tick()
    assert controller.limit == 64  # the step brought four times as much: grow again


def test_a_step_that_seems_to_lose_bytes_is_looked_at_once_more(clock):
    controller = make(clock, capped_growth=8.0)
    controller.streaming = 4
    step(controller, clock, 100)
    assert controller.limit == 32
    step(controller, clock, 0)  # nothing counted: the loop was late, not the link
    assert controller.limit == 32  # not undone on one interval below what 4 carried
    clock.now += 1.0
    controller.counted(800)
    controller.tick()  # over both intervals: 400 a second against 100
    assert controller.limit == 64  # the step paid: grow on
    step(controller, clock, 0)
    clock.now += 1.0
    controller.counted(300)
    controller.tick()  # 150 a second over both, below the 800 of 32 before: undone after all
    assert controller.limit == 32


def test_a_step_whose_connections_never_start_is_judged_after_start_limit(clock):
    controller = make(clock, start_limit=2.0)
    step(controller, clock, 100)
    busy(controller)
    controller.streaming = 4
    for _ in range(2):
        clock.now += 1.0
        controller.counted(100)
        controller.tick()
    assert controller.steps.settling is False  # two seconds: judged now, whatever they do
    clock.now += 1.0
    controller.counted(100)
    controller.tick()
    assert controller.limit == 4  # the step brought nothing: undone


def test_it_does_not_grow_when_the_slots_it_has_are_not_all_used(clock):
    controller = make(clock)
    controller.try_acquire()
    clock.now += 1.0
    controller.counted(1000)
    controller.tick()
    assert controller.limit == 4


def test_503_shrinks_to_what_the_server_serves_and_honours_retry_after(clock):
    controller = make(clock, pushback_hold=1.0, capped_growth=2.0)
    step(controller, clock, 100)
    assert controller.limit == 8
    controller.streaming = 3  # the server serves three bodies; the others got 503
    controller.pushback(retry_after=30.0)
    assert controller.limit == 3 and controller.over_limit()
    for _ in range(29):
        step(controller, clock, 100_000)  # however fast it goes, no growth before Retry-After
        assert controller.limit == 3
    clock.now += 2.0
    step(controller, clock, 100_000)
    assert controller.limit == 6


def test_pushback_with_nothing_streaming_halves_and_never_reaches_zero(clock):
    controller = make(clock, initial=2)
    controller.pushback()
    assert controller.limit == 1
    controller.pushback()
    assert controller.limit == 1


async def test_acquire_waits_for_a_release(clock):
    import asyncio

    controller = make(clock, initial=1)
    assert controller.try_acquire() and not controller.try_acquire()
    waiter = asyncio.create_task(controller.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    controller.release()
    await asyncio.wait_for(waiter, 1)
    assert controller.active == 1 and controller.peak_active == 1


def test_capped_connections_grow_faster_and_fruitless_probes_get_rarer(clock):
    controller = make(clock, hold_seconds=2.0)
    controller.streaming = 4  # four connections at 25 bytes/s each: clearly capped
    step(controller, clock, 100)
    assert controller.limit == 32  # x8 while each connection is capped
    step(controller, clock, 100)  # 32 carried no more than four: undo, hold 2 s
    assert controller.limit == 4
    step(controller, clock, 100)  # (the 28 over the limit end in this interval)
    step(controller, clock, 100)
    assert controller.limit == 32  # probed again after 2 s
    step(controller, clock, 100)
    assert controller.limit == 4
    step(controller, clock, 100)
    step(controller, clock, 100)
    assert controller.limit == 4  # the next probe waits 4 s: fruitless probes get rarer


def test_a_started_shard_keeps_a_slot_for_its_first_connection(clock):
    controller = make(clock, initial=2)
    arrived = controller.expect()  # a second shard was started but has not asked yet
    assert controller.try_acquire()  # the first shard's first connection
    assert not controller.try_acquire()  # its split may not take the second shard's slot
    arrived()
    arrived()  # idempotent: the shard and the engine may both say so
    assert controller.starting == 0
    assert controller.try_acquire()


def test_no_growth_while_no_core_is_idle(clock):
    idle = [0.1]
    controller = ConnectionController(
        ControllerSettings(initial=4, ceiling=64), clock=clock, idle=lambda: idle[0]
    )
    step(controller, clock, 100)
    step(controller, clock, 100)
    assert controller.limit == 4  # the CPU limits, not the link: more would only slow it
    idle[0] = 1.5
    step(controller, clock, 100)
    assert controller.limit == 8  # a core is free again: it grows


def test_capped_connections_grow_while_another_s_work_keeps_every_core_busy(clock):
    """A far CDN from a machine that also trains: the link limits, not the CPU."""
    own = [0.2]
    controller = ConnectionController(
        ControllerSettings(initial=4, ceiling=64, capped_growth=2.0),
        clock=clock,
        idle=lambda: 0.0,
        own=lambda: own[0],
    )
    controller.per_connection = 8e6  # each connection held to 8 MB/s
    step(controller, clock, 100)
    assert controller.limit == 8
    own[0] = 1.2  # the busy cores are ours: more connections would only slow these
    step(controller, clock, 200)
    step(controller, clock, 200)
    assert controller.limit == 8
    own[0], controller.per_connection = 0.2, 200e6  # a near server: not capped
    step(controller, clock, 200)
    step(controller, clock, 200)
    assert controller.limit == 8


@pytest.mark.parametrize(("load", "limit"), [(0.5, 32), (0.25, 64), (0.95, 16), (None, 128)])
def test_a_step_never_grows_past_what_the_receiving_thread_can_take(clock, load, limit):
    """Busy half the time, the thread can take at most twice the bytes: x2, not x8."""
    controller = ConnectionController(
        ControllerSettings(initial=16, ceiling=128, capped_growth=8.0),
        clock=clock,
        busy=lambda: load,
    )
    controller.per_connection = 1.0  # capped connections
    step(controller, clock, 100)
    assert controller.limit == limit  # (0.95: no step, 1/0.95 is less than a step must bring)


def test_without_a_receiving_thread_capped_connections_grow_by_the_capped_factor(clock):
    controller = ConnectionController(
        ControllerSettings(initial=4, ceiling=128, capped_growth=8.0), clock=clock
    )
    controller.per_connection = 1.0
    step(controller, clock, 100)
    assert controller.limit == 32


@pytest.mark.parametrize(
    ("idle", "cpu_bound", "per_connection", "limit"),
    [
        (0.1, 4, None, 4),
        (0.1, 4, 100e6, 4),
        (0.1, 4, 8e6, 32),  # capped: the link limits; another's work keeps the cores busy
        (1.5, 4, None, 32),
        (0.1, 0, None, 16),
    ],
)
def test_a_first_look_with_no_idle_core_falls_back_from_the_initial_guess(
    clock, idle, cpu_bound, per_connection, limit
):
    """16 connections is a guess for a far CDN; a near server is CPU-bound: one per shard."""
    controller = ConnectionController(
        ControllerSettings(initial=16, cpu_bound=cpu_bound, ceiling=64, capped_growth=2.0),
        clock=clock,
        idle=lambda: idle,
        own=lambda: 0.2,  # this process used a fifth of a core
    )
    controller.per_connection = per_connection
    step(controller, clock, 0)  # no byte yet: nothing is judged
    assert controller.limit == 16 and controller.steps.blind
    step(controller, clock, 100)
    assert controller.limit == limit and not controller.steps.blind
    assert controller.over_limit() == (limit < 16)  # the extra connections give back their slots


def test_after_a_fall_back_no_step_is_taken_until_the_extra_connections_have_ended(clock):
    """Measured while the 16 first connections still end, a step from 4 would be judged
    against their bytes, undone and held: a far CDN then ran on 4 connections for seconds
    (HTTPS 24 MiB/s, 2 x 384 MiB with 32 first connections: 3.2x aria2c's time)."""
    idle = [0.1]
    controller = ConnectionController(
        ControllerSettings(initial=16, cpu_bound=4, ceiling=64, capped_growth=8.0),
        clock=clock,
        idle=lambda: idle[0],
        own=lambda: 1.0,  # the handshakes kept this process busy
    )
    controller.per_connection = 1e6
    step(controller, clock, 100)
    assert controller.limit == 4 and controller.active == 16  # fell back; 12 to end
    idle[0] = 1.5  # the handshakes are over: cores idle, each connection capped
    for _ in range(3):  # four end after their pieces each time; the last interval still
        for _ in range(4):  # counted the bytes of those that ended in it
            controller.release()
        clock.now += 1.0
        controller.counted(100)
        controller.tick()
        assert controller.limit == 4 and controller.steps.before is None  # no step yet
    step(controller, clock, 100)  # an interval on the 4 alone: grow from here
    assert controller.limit == 32


def test_thread_load_is_the_share_of_a_core_between_two_calls():
    now, used = [10.0], [0.0]
    load = ThreadLoad(lambda: used[0], lambda: now[0])
    now[0], used[0] = 10.5, 0.0
    assert load() is None  # the thread has not run yet
    now[0], used[0] = 11.0, 0.25
    assert load() == pytest.approx(0.5)
    now[0], used[0] = 12.0, 1.25
    assert load() == pytest.approx(1.0)
    assert load() is None  # no time passed


def test_idle_cores_are_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n")
    probe = IdleCores(stat)
    probe.cores = 2
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 of 200 jiffies idle
    assert probe() == pytest.approx(1.0)
    stat.write_text("garbage\n")
    assert probe() is None
    assert IdleCores(tmp_path / "missing")() is None


def test_no_step_before_any_byte_was_measured(clock):
    controller = make(clock)
    step(controller, clock, 0)  # connections still starting (a far CDN: TLS, first RTTs)
    assert controller.limit == 4
    step(controller, clock, 100)
    assert controller.limit == 8


def test_after_a_refusal_it_grows_gently(clock):
    controller = make(clock, pushback_hold=1.0)
    controller.streaming = 4  # capped connections: x8 at first
    controller.pushback(None)  # the server counts connections
    clock.now += 2.0
    controller.streaming = 4
    step(controller, clock, 100)
    assert controller.limit == 8  # x2, not x8, into a server that refuses
