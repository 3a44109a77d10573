"""The controller's pieces that run without a worker group (the agreements themselves: tests/integration; the
decisions: tests/unit/test_control_policy.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from orchestrator.worker import control, control_inputs


def test_this_ray_has_the_worker_local_drain_notice_so_a_control_point_is_one_collective() -> None:
    # With Ray 2.60, rank 0 reads Ray Train's drain notice from its own train context and sends it in the
    # decision; without the reader every worker would also call ray.train.get_preemption_info (a second
    # collective at every control point). A Ray upgrade that moves the notice must fail here, not slow down.
    assert control_inputs.LOCAL_DRAIN_NOTICE is not None


def test_agreement_count_describes_where_agreements_were_and_the_wait() -> None:
    count = control.AgreementCount(at_boundaries=7, within_epochs=44, waited_s=0.214, first_s=0.004)
    assert count.describe() == (
        "51 control agreements (7 at epoch boundaries, 44 within epochs), 0.21 s waiting in them (the first 0.00 s)"
    )
    assert control.AgreementCount().describe() == (
        "0 control agreements (0 at epoch boundaries, 0 within epochs), 0.00 s waiting in them"
    )


def test_diverged_weights_are_recognised_so_that_no_backup_holds_them() -> None:
    import numpy as np
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2)])
    assert control.finite_weights(model)
    kernel, bias = model.get_weights()
    kernel[1, 0] = np.nan
    model.set_weights([kernel, bias])
    assert not control.finite_weights(model)
    kernel[1, 0] = np.inf
    model.set_weights([kernel, bias])
    assert not control.finite_weights(model)


def test_an_attempt_ended_after_a_notice_is_recorded_as_a_notice_from_the_errors_type_not_its_text() -> None:
    """Ray Train's controller gets each worker's own exception (unpickled there): its ``failure_kind`` says."""
    import pickle

    from orchestrator.driver import failure_kind
    from orchestrator.errors import TrainingFailedError
    from orchestrator.spec import JobSpec
    from orchestrator.store import JobStore
    from tests.conftest import quickstart_raw

    store = JobStore("memory://failure-kind")
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "kinds"}))
    notice = pickle.loads(pickle.dumps(control.PreemptionNoticeError("just-in-time: backup taken")))
    assert failure_kind(store, "kinds", [RuntimeError("boom"), notice]) == "notice"
    assert failure_kind(store, "kinds", [RuntimeError("PreemptionNoticeError: being drained")]) == "failure"
    assert failure_kind(store, "kinds", [TrainingFailedError("rank 0: PreemptionNoticeError")]) == "failure"
