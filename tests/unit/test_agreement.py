"""Agreements through TensorFlow's coordination service (``worker/agreement.py``): two real TensorFlow processes
under MultiWorkerMirroredStrategy (TF_CONFIG on local ports) agree, gather and wait for each other, in order."""

from __future__ import annotations

import textwrap
from pathlib import Path

from orchestrator.worker.agreement import coordination_problem
from tests.tf_workers import run_workers

WORKER = textwrap.dedent(
    """
    import json, logging, os, sys, time
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from tensorflow.python.eager import context
    from orchestrator.worker import agreement

    rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert agreement.use_coordination_service(rank, 2, logging.getLogger("w"))
    channel = agreement._channel
    out = {}
    out["agreed"] = [channel.agree({"n": n, "from": rank}) for n in range(5)]
    if rank == 1:
        time.sleep(1.5)  # rank 0 must wait for this worker at the next agreement: it is a barrier
    started = time.monotonic()
    out["late"] = channel.agree("after the wait" if rank == 0 else None)
    out["waited_s"] = time.monotonic() - started
    out["gathered"] = channel.gather({"rank": rank, "pid": os.getpid() > 0})
    started = time.monotonic()
    for n in range(50):
        channel.agree(n)
    out["ms_per_agreement"] = (time.monotonic() - started) / 50 * 1000
    if rank == 0:  # every agreement's keys are gone once all workers passed its barrier
        gone = []
        for n in (0, 5, 6, 56):
            try:
                context.context().get_config_key_value(f"{agreement.PREFIX}/{n}", 200)
                gone.append(False)
            except Exception:
                gone.append(True)
        out["keys_gone"] = gone
    channel.agree(None)  # neither process ends while the other still reads
    print(json.dumps(out))
    """
)


def test_the_tensorflow_calls_used_are_still_there() -> None:
    assert coordination_problem() is None


def test_two_workers_agree_gather_and_wait_for_each_other_through_the_coordination_service(tmp_path: Path) -> None:
    results = run_workers(WORKER, tmp_path)
    zero, one = results
    assert zero["agreed"] == one["agreed"] == [{"n": n, "from": 0} for n in range(5)]  # rank 0's, in order
    assert zero["late"] == one["late"] == "after the wait"
    assert zero["waited_s"] >= 1.0  # rank 0 waited at the barrier for the late worker
    assert zero["gathered"] == [{"rank": 0, "pid": True}, {"rank": 1, "pid": True}] and one["gathered"] is None
    assert zero["keys_gone"] == [True, True, True, True]
    print(f"coordination service: {zero['ms_per_agreement']:.1f} ms per agreement")
