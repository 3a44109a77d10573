"""An elastic job's size decisions (``orchestrator.resize_policy``), from the nodes Ray has, one call at a time."""

from __future__ import annotations

from orchestrator.resize_policy import GROW_AFTER_S, WARM_WAIT_S, NodeView, grow_size, placeable, start_size, warm_wait

ONE_CPU = {"CPU": 1.0}


def nodes(*cpus: float, gone: tuple[int, ...] = ()) -> list[NodeView]:
    return [NodeView(f"node{i:02d}{'x' * 10}", {"CPU": c, "memory": 1e9}, i not in gone) for i, c in enumerate(cpus)]


def test_a_node_holds_whole_workers_of_every_resource_they_ask_for() -> None:
    gpu_node = NodeView("gpu", {"CPU": 16.0, "GPU": 3.0})
    assert placeable([gpu_node], {"CPU": 4.0, "GPU": 1.0}) == 3  # GPUs bind first
    assert placeable([gpu_node], {"CPU": 8.0, "GPU": 1.0}) == 2  # then CPUs
    assert placeable([gpu_node, NodeView("cpu", {"CPU": 64.0})], {"CPU": 4.0, "GPU": 1.0}) == 3
    assert placeable(nodes(1.0, 1.0, gone=(1,)), ONE_CPU) == 1  # a node whose raylet does not answer holds none


def test_a_group_starts_at_the_largest_allowed_size_that_fits_or_waits() -> None:
    full = start_size([2, 1], nodes(1.0, 1.0), ONE_CPU)
    assert (full.size, full.reason) == (2, "all 2 worker(s) can be placed")
    shrunk = start_size([2, 1], nodes(1.0, 1.0, gone=(1,)), ONE_CPU)
    assert shrunk.size == 1
    assert shrunk.reason == "1 of 2 worker(s) can be placed now; node(s) node01xxxxxx do not answer: continuing on 1"
    uneven = start_size([4, 2, 1], nodes(1.0, 1.0, 1.0), ONE_CPU)  # 3 fit, but 3 does not split the batch
    assert uneven.size == 2 and "(3 would not split the global batch evenly)" in uneven.reason
    waiting = start_size([2], nodes(1.0, 1.0, gone=(0,)), ONE_CPU)
    assert waiting.size is None and "the live nodes hold 1 worker(s), fewer than min_workers (2)" in waiting.reason


def test_a_running_group_grows_once_the_room_has_lasted() -> None:
    now = 100.0
    first = grow_size([2, 1], 1, nodes(1.0, 1.0), ONE_CPU, now, None)
    assert first.size is None and first.since == now  # seen, not yet lasting
    early = grow_size([2, 1], 1, nodes(1.0, 1.0), ONE_CPU, now + GROW_AFTER_S / 2, first)
    assert early.size is None and early.since == now
    assert first.target == early.target == 2  # warm processes are started from the first sight of the room
    grown = grow_size([2, 1], 1, nodes(1.0, 1.0), ONE_CPU, now + GROW_AFTER_S, early)
    assert grown.size == 2 and grown.reason.startswith("room for 2 worker(s) again for 2.0 s: growing from 1 to 2")
    gone_again = grow_size([2, 1], 1, nodes(1.0, 1.0, gone=(1,)), ONE_CPU, now + GROW_AFTER_S, early)
    assert gone_again.size is None and gone_again.since is None  # the room went: the clock starts over
    assert grow_size([2, 1], 2, nodes(1.0, 1.0, 1.0), ONE_CPU, now, None).since is None  # full size: nothing to do
    assert grow_size([4, 2], 2, nodes(1.0, 1.0, 1.0), ONE_CPU, now, None).since is None  # 3 is no allowed size


def test_the_ray_train_internals_the_elastic_policy_uses_are_all_there() -> None:
    """Fails on a Ray upgrade that moves them: an elastic job would then run at its full size only (one log line)."""
    from orchestrator.elastic import ray_train_scaling_problem

    assert ray_train_scaling_problem() is None


def test_install_gives_only_the_elastic_jobs_config_the_elastic_policy() -> None:
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    from ray.train.v2.api import data_parallel_trainer
    from ray.train.v2.api.config import ScalingConfig

    from orchestrator.elastic import install

    mine, other = ScalingConfig(num_workers=2), ScalingConfig(num_workers=2)
    install(mine, lambda config: ("elastic", config))
    assert data_parallel_trainer.create_scaling_policy(mine) == ("elastic", mine)
    assert isinstance(data_parallel_trainer.create_scaling_policy(other), FixedScalingPolicy)
    assert isinstance(data_parallel_trainer.create_scaling_policy(mine), FixedScalingPolicy)  # used once


def test_a_due_growth_waits_for_warm_processes_only_as_long_as_waiting_pays() -> None:
    started = 100.0
    ready, state = warm_wait(started, True, started + 4.0)
    assert ready and state == "warm processes on the joining node(s) ready after 4.0 s"
    waiting, state = warm_wait(started, False, started + 4.0)
    assert not waiting and state.startswith("waiting for warm processes")
    cold, state = warm_wait(started, False, started + WARM_WAIT_S)
    assert cold and state.endswith(f"not ready after {WARM_WAIT_S:.0f} s: new workers start cold")
    never, state = warm_wait(None, False, started)  # none could be started: no wait at all
    assert never and "start cold" in state
    # at half size, waiting W s costs W/2 s of full-size training: more than the ~6 s a warm start saves past 12 s
    assert WARM_WAIT_S <= 15.0
