"""The environment every process of a job gets."""

from __future__ import annotations

import pytest

from orchestrator.launcher import job_env


def test_job_env_forces_tf_keras_and_tightens_ray_trains_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", raising=False)
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")  # never the user's: Keras 3 fails under MWMS
    env = job_env()
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert float(env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) < 2.0  # Ray Train's default: 2 s
    assert float(env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"]) < 5.0  # Ray Train's default: 5 s


def test_a_users_own_ray_train_interval_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    assert job_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
