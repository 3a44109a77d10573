"""Notifications through real apprise to a real HTTP endpoint: what each status change sends, where, and that a
destination that fails never reaches the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.notify import Message, Notifier, event_for, resolve_urls
from orchestrator.spec import JobSpec, NotifySpec
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.user_config import load_config
from tests.conftest import quickstart_raw, write_spec
from tests.notify_server import inbox

pytest.importorskip("apprise", reason="the notify extra: pip install -e '.[test]' installs apprise")


@pytest.mark.parametrize(
    ("status", "failure", "event"),
    [
        (JobStatus.SUCCEEDED, None, "succeeded"),
        (JobStatus.STOPPED, None, "stopped"),
        (JobStatus.FAILED, None, "failed"),
        (JobStatus.RECOVERING, "preemption", "preempted"),
        (JobStatus.RECOVERING, "notice", "preempted"),
        (JobStatus.RECOVERING, "failure", "restarted"),
        (JobStatus.RUNNING, None, None),
        (JobStatus.PENDING, None, None),
        (JobStatus.STOPPING, None, None),
    ],
)
def test_each_status_change_means_one_event_or_none(status: JobStatus, failure: str | None, event: str | None) -> None:
    assert event_for(status, failure) == event  # type: ignore[arg-type]


def test_env_urls_are_read_from_the_drivers_environment() -> None:
    urls, problems = resolve_urls(["json://a/b", "env:HOOK", "env:MISSING"], {"HOOK": "ntfy://topic"})
    assert urls == ["json://a/b", "ntfy://topic"]
    assert problems == ["env:MISSING: the environment variable MISSING is not set on the driver's machine"]


def test_the_events_asked_for_reach_the_endpoint_and_the_others_do_not() -> None:
    logged: list[str] = []
    with inbox() as box:
        spec = NotifySpec(urls=[box.url], on=["failed", "preempted"])
        notifier = Notifier("quickstart", spec, on_log=logged.append)
        notifier.status_changed(
            JobStatus.RECOVERING, "worker group failed (node drained)", attempt=2, failure="preemption"
        )
        notifier.status_changed(JobStatus.RECOVERING, "worker group failed (killed)", attempt=3, failure="failure")
        notifier.status_changed(JobStatus.FAILED, "failure budget spent: 3 restarts", attempt=4)
        notifier.flush()
        messages = box.wait_for(2)
    titles = sorted(m["title"] for m in messages)  # sent on their own threads: in either order
    assert titles == ["orchestrator: job 'quickstart' failed", "orchestrator: job 'quickstart' preempted"]
    failed = next(m for m in messages if m["title"].endswith("failed"))
    assert "job 'quickstart' (attempt 4) FAILED: failure budget spent: 3 restarts" in failed["message"]
    assert "see: orchestrator status quickstart" in failed["message"]
    assert logged.count("notification 'failed' sent") == 1 and logged.count("notification 'preempted' sent") == 1


def test_a_destination_that_is_down_or_raises_is_logged_and_never_raised() -> None:
    logged: list[str] = []
    with inbox() as box:
        dead = box.url  # the server closes at the end of the block: nothing listens there afterwards
    notifier = Notifier("quickstart", NotifySpec(urls=[dead]), on_log=logged.append)
    notifier.status_changed(JobStatus.SUCCEEDED, None, attempt=1)
    notifier.flush()
    assert logged[-1] == "notification 'succeeded' not sent: a destination refused it or did not answer"

    def broken(urls: list[str], note: Message) -> bool:
        raise RuntimeError("service exploded")

    notifier = Notifier("quickstart", NotifySpec(urls=["json://x/y"]), send=broken, on_log=logged.append)
    notifier.status_changed(JobStatus.STOPPED, "stopped by a person", attempt=1)
    notifier.flush()
    assert logged[-1] == "notification 'stopped' not sent: RuntimeError: service exploded"


def test_no_urls_means_no_notifier_and_a_missing_env_url_is_said_once() -> None:
    logged: list[str] = []
    notifier = Notifier("quickstart", NotifySpec(urls=["env:ORCHESTRATOR_TEST_UNSET_HOOK"]), on_log=logged.append)
    assert not notifier.enabled
    assert logged == [
        "notifications: env:ORCHESTRATOR_TEST_UNSET_HOOK: the environment variable ORCHESTRATOR_TEST_UNSET_HOOK is "
        "not set on the driver's machine; that destination is skipped"
    ]
    notifier.status_changed(JobStatus.FAILED, "x")  # nothing to send to: nothing happens
    assert len(logged) == 1


def test_the_config_files_list_is_used_when_the_spec_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('notify = ["json://127.0.0.1:9/hook"]\n')
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    assert load_config().notify == ["json://127.0.0.1:9/hook"]
    notifier = Notifier("quickstart", NotifySpec(), load_config().notify or [], on_log=lambda _: None)
    assert notifier.urls == ["json://127.0.0.1:9/hook"]
    own = Notifier("quickstart", NotifySpec(urls=["json://own/hook"]), load_config().notify or [], on_log=print)
    assert own.urls == ["json://own/hook"]


def test_a_bad_notify_section_is_a_one_line_spec_error(tmp_path: Path) -> None:
    raw = {**quickstart_raw(), "notify": {"urls": ["hooks.slack.com/x"], "on": ["succeeded", "exploded"]}}
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, raw))
    text = "\n".join(caught.value.problems)
    assert "notify.urls" in text and "neither an apprise URL" in text
    assert "notify.on" in text and "exploded" in text
    spec = JobSpec.model_validate({**quickstart_raw(), "notify": {"urls": ["env:SLACK_HOOK"]}})
    assert spec.notify.on == ["succeeded", "stopped", "failed", "preempted"]
