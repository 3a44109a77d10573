"""The Python API without Ray: the forms of load_spec, a handle's reads on records written to a real store, and
the errors a notebook user gets (a missing job, a Python-function model where one cannot work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.errors import JobNotFoundError, SpecError, UsageError
from orchestrator.records import EpochRecord
from orchestrator.spec import CallableModel, FunctionModel, JobSpec, SmallCNNModel
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS, quickstart_raw, write_spec

REPO = Path(__file__).resolve().parents[2]


def build(input_shape: tuple[int, ...], num_classes: int, width: int = 4) -> Any:
    raise AssertionError("never called here: no job runs in these tests")


def test_load_spec_from_a_file_with_fields_a_name_and_overrides() -> None:
    spec = orchestrator.load_spec(JOBS / "quickstart.yaml", epochs=2, name="qs-2", overrides=["batch_size=32"])
    assert (spec.name, spec.epochs, spec.batch_size) == ("qs-2", 2, 32)
    assert isinstance(spec.model, SmallCNNModel)


def test_load_spec_from_a_dict_keywords_and_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = quickstart_raw()
    from_dict = orchestrator.load_spec(raw)
    assert from_dict == orchestrator.load_spec(JOBS / "quickstart.yaml")
    from_keywords = orchestrator.load_spec(**raw)
    assert from_keywords == from_dict
    changed = orchestrator.load_spec(from_dict, epochs=9)
    assert changed.epochs == 9 and from_dict.epochs == 6  # a copy: the spec given is unchanged
    # a dict's relative paths are taken from the working directory (a file's, from its folder)
    (tmp_path / "model.py").write_text("def build(shape, classes):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    spec = orchestrator.load_spec(raw, model={"function": "model.py:build"})
    assert isinstance(spec.model, FunctionModel) and spec.model.file == str(tmp_path / "model.py")


def test_load_spec_reports_every_problem_and_refuses_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as error:
        orchestrator.load_spec(quickstart_raw(), epochs=0, batch_size="big")
    assert {p.split(":")[0] for p in error.value.problems} == {"epochs", "batch_size"}
    with pytest.raises(SpecError) as error:  # a field given here is not at the file's line: none is named
        orchestrator.load_spec(JOBS / "quickstart.yaml", epochs=0)
    assert error.value.problems == ["epochs: got 0, must be greater than 0"]
    sweep = write_spec(tmp_path, {"sweep": "s", "base": quickstart_raw(), "variants": [{"name": "a"}]})
    with pytest.raises(UsageError, match="this is a sweep"):
        orchestrator.load_spec(sweep)


def test_load_spec_with_a_python_function_as_the_model() -> None:
    spec = orchestrator.load_spec(JOBS / "quickstart.yaml", model_fn=build)
    assert isinstance(spec.model, CallableModel)
    assert (spec.model.callable, spec.model.params, spec.model.builder) == ("build", {}, build)
    with_params = orchestrator.load_spec(quickstart_raw(), model={"params": {"width": 8}}, model_fn=build)
    assert isinstance(with_params.model, CallableModel) and with_params.model.params == {"width": 8}
    renamed = orchestrator.load_spec(with_params, name="other")  # the function stays with the spec
    assert isinstance(renamed.model, CallableModel) and renamed.model.builder is build
    recorded = JobSpec.model_validate_json(with_params.model_dump_json())  # what the store keeps: its name only
    assert isinstance(recorded.model, CallableModel) and recorded.model.builder is None
    with pytest.raises(UsageError, match="model_fn: got 3"):
        orchestrator.load_spec(quickstart_raw(), model_fn=3)  # type: ignore[arg-type]


def test_a_spec_file_cannot_carry_a_python_function(tmp_path: Path) -> None:
    raw = {**quickstart_raw(), "model": {"callable": "build"}}
    path = write_spec(tmp_path, raw)
    store = str(tmp_path / "store")
    with pytest.raises(UsageError, match="no Python function came with it") as error:
        orchestrator.run(path, store=store)  # refused before Ray starts: this test has none
    assert "model: {function: path/to/file.py:build}" in (error.value.hint or "")
    assert JobStore(store).job_names() == []
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--store", store],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == UsageError.exit_code and "no Python function came with it" in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_refuses_a_python_function_and_a_dict_naming_local_files(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    spec = orchestrator.load_spec(quickstart_raw(), model_fn=build)
    with pytest.raises(UsageError, match=r"build\(\) is a Python function of this process"):
        orchestrator.submit(spec, store=store, address="http://127.0.0.1:1")
    (tmp_path / "data.npz").write_bytes(b"")
    raw = {**quickstart_raw(), "data": {"kind": "npz", "url": str(tmp_path / "data.npz")}}
    with pytest.raises(UsageError, match=r"data.url: .* is a file on this machine"):
        orchestrator.submit(raw, store=store, address="http://127.0.0.1:1")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(str(tmp_path / "store"))


def test_a_missing_job_and_a_bad_name_are_one_line_errors(store: JobStore) -> None:
    store.create_job(orchestrator.load_spec(quickstart_raw()))
    with pytest.raises(JobNotFoundError, match="no job named 'quickstar' in store") as error:
        orchestrator.job("quickstar", store=store.url)
    assert error.value.hint == "did you mean 'quickstart'?"
    with pytest.raises(UsageError, match="job name: got 'Not A Name'"):
        orchestrator.job("Not A Name", store=store.url)
    with pytest.raises(JobNotFoundError):
        orchestrator.Job("nope", store=store).set_lr(1e-3)


def finished_job(store: JobStore, lrs: list[float]) -> orchestrator.Job:
    """A job whose records say it trained ``len(lrs)`` epochs at these LRs (written as the workers write them)."""
    spec = orchestrator.load_spec(quickstart_raw(), epochs=len(lrs))
    store.create_job(spec)
    for epoch, lr in enumerate(lrs):
        metrics = {"loss": 2.0 - epoch / 10, "accuracy": 0.2 + epoch / 10, "val_loss": 2.1, "val_accuracy": 0.2}
        store.append_history(
            "quickstart", EpochRecord(epoch=epoch, attempt=1, learning_rate=lr, metrics=metrics, seconds=1.5)
        )
    return orchestrator.job("quickstart", store=store)


def test_history_is_a_dataframe_and_plot_a_figure(store: JobStore, tmp_path: Path) -> None:
    job = finished_job(store, [1e-3, 1e-3, 3e-4])
    history = job.history()
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["learning_rate"].tolist() == [1e-3, 1e-3, 3e-4]
    assert history["loss"].tolist() == pytest.approx([2.0, 1.9, 1.8])
    figure = job.plot(["loss"], path=tmp_path / "run.png")
    labels = [line.get_label() for axis in figure.axes for line in axis.get_lines()]
    assert "loss" in labels and "learning rate" in labels
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match=r"the folder .* does not exist"):
        job.plot(path=tmp_path / "missing" / "run.png")


def test_history_without_pandas_says_how_to_get_it(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job = finished_job(store, [1e-3])
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` does where it is not installed
    with pytest.raises(UsageError, match="pandas is not installed") as error:
        job.history()
    assert "spot-orchestrator[notebook]" in (error.value.hint or "")


def test_wait_returns_a_finished_jobs_outcome_and_times_out_on_a_running_one(store: JobStore) -> None:
    job = finished_job(store, [1e-3, 1e-3])
    store.set_status("quickstart", JobStatus.RUNNING)
    with pytest.raises(TimeoutError, match=r"still RUNNING after 0\.2 s"):
        job.wait(timeout=0.2)
    store.set_status("quickstart", JobStatus.SUCCEEDED)
    result = job.wait(timeout=5)
    assert result.status is JobStatus.SUCCEEDED and result.epochs_done == 2


def test_resume_checks_the_lr_as_set_lr_does_and_needs_the_python_function_again(store: JobStore) -> None:
    spec = orchestrator.load_spec(quickstart_raw(), model_fn=build)
    store.create_job(spec)
    store.set_status("quickstart", JobStatus.STOPPED, "stopped by a test")
    job = orchestrator.job("quickstart", store=store)
    for bad in (-1e-3, float("nan"), 0.0):
        with pytest.raises(UsageError, match="learning rate: got"):
            job.resume(bad)
    with pytest.raises(UsageError, match="needs that function again") as error:
        job.resume()
    assert "resume(model_fn=build)" in (error.value.hint or "")
    with pytest.raises(UsageError, match="--from-epoch: got 0"):
        job.resume(from_epoch=0)
    assert store.read_state("quickstart").status is JobStatus.STOPPED  # nothing changed
    assert store.read_commands("quickstart") == []
    done = subprocess.run(  # the command refuses alike: it calls the same resume
        [sys.executable, "-m", "orchestrator", "resume", "quickstart", "--store", store.url],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == UsageError.exit_code and "needs that function again" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_resume_refuses_a_function_for_a_job_built_from_its_spec(store: JobStore) -> None:
    job = finished_job(store, [1e-3])
    store.set_status("quickstart", JobStatus.STOPPED, "stopped by a test")
    with pytest.raises(UsageError, match="builds its model from its spec \\(small_cnn\\)"):
        job.resume(model_fn=build)


def test_importing_orchestrator_and_its_api_loads_no_tensorflow_and_no_ray() -> None:
    code = (
        "import sys, orchestrator\n"
        "assert orchestrator.run and orchestrator.job and orchestrator.Job and orchestrator.load_spec\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tf_keras', 'keras', 'ray'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


def test_the_package_exports_the_api_and_nothing_else_by_surprise() -> None:
    assert set(orchestrator.__all__) == {"Job", "__version__", "job", "load_spec", "run", "run_sweep", "submit"}
    assert set(orchestrator.__all__) <= set(dir(orchestrator))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        orchestrator.nope  # noqa: B018


def test_run_sweep_keeps_finished_variants_and_compares_them(
    store: JobStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.sweep import load_sweep

    base = {k: v for k, v in quickstart_raw().items() if k != "name"}
    sweep = write_spec(
        tmp_path,
        {"sweep": "s", "base": base, "variants": [{"name": "a"}, {"name": "b", "epochs": 2}]},
        "sweep.yaml",
    )
    for spec in load_sweep(sweep):  # both variants SUCCEEDED in an earlier run of the sweep: nothing to train
        store.create_job(spec)
        for epoch in range(spec.epochs):
            metrics = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0 + epoch, "val_accuracy": 0.4 + epoch / 10}
            store.append_history(
                spec.name, EpochRecord(epoch=epoch, attempt=1, learning_rate=1e-3, metrics=metrics, seconds=1.0)
            )
        store.set_status(spec.name, JobStatus.RUNNING)
        store.set_status(spec.name, JobStatus.SUCCEEDED)
    figure = tmp_path / "curves.png"
    table = orchestrator.run_sweep(sweep, store=store.url, figure=str(figure))
    assert [(row.job, row.epochs) for row in table.rows] == [("s-a", 6), ("s-b", 2)]
    assert table.rows[1].best_val_accuracy == pytest.approx(0.5)
    assert table.figure == str(figure) and figure.read_bytes()[:4] == b"\x89PNG"
    said = capsys.readouterr().out
    assert "[2/2] s-b: " in said and "s-b: kept: it SUCCEEDED in an earlier run of the sweep (2 epochs)" in said
