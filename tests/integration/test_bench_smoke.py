"""The benchmark's scripts keep working: its accounting, its preemption schedule and its report (fast, no Ray),
a short form of ``python -m bench --smoke`` end to end in every run (its scale section: two small jobs, each
killed once), and the whole smoke (slow: opt-in with ``BENCH_SMOKE=1``). The table lives in bench/README.md.

A benchmark is not a test: nothing here checks a figure against its target. The end-to-end smoke runs fifteen
short Ray Train jobs, five restarts and two lost nodes, 10 to 12 minutes on this shared 2-core machine, so it
stays out of the default run (CI's budget); the fast tests cover the code that turns step files into figures.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import Calibration, Preempter
from bench.figures import Figure
from bench.report import README_BEGIN, README_END, markdown, write_readme
from bench.timeline import Timeline
from tests.conftest import REPO

FIGURES = (
    "throughput",
    "throughput_quiet",
    "overhead_epoch",
    "overhead_auto",
    "overhead_gcs",
    "overhead_steps",
    "step_gap",
    "goodput_kill",
    "lost_steps_kill",
    "goodput_notice",
    "lost_steps_notice",
    "resume",
    "warm_hits",
    "resume_detection",
    "resume_worker_start",
    "resume_import_build",
    "resume_restore",
    "resume_first_step",
    "control_now",
    "control_epoch",
    "scale_0_checkpoint",
    "scale_0_resume",
    "lostnode_training_again",
    "lostnode_full_size",
    "lostnode_useful",
)


def write_steps(folder: Path, rank: int, pid: int, steps: list[tuple[int, float, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"E build_end {steps[0][1] - 1:.6f}"] + [f"S {i} {a:.6f} {b:.6f}" for i, a, b in steps]
    (folder / f"rank{rank}-pid{pid}.steps").write_text("\n".join(lines) + "\n")


def test_goodput_counts_only_the_last_execution_of_each_step(tmp_path: Path) -> None:
    # Attempt 1 trains steps 0-9 (1 s each) and is killed at t=10.5; its backup was at step 6. Attempt 2
    # starts at t=20 from step 6 and trains to step 19 (0.5 s each). Counted: 0-5 of attempt 1, 6-19 of attempt 2.
    write_steps(tmp_path, 0, 100, [(i, float(i), i + 1.0) for i in range(10)])
    write_steps(tmp_path, 0, 200, [(i, 20 + (i - 6) / 2, 20.5 + (i - 6) / 2) for i in range(6, 20)])
    write_steps(tmp_path, 1, 101, [(i, float(i), i + 1.0) for i in range(10)])  # rank 1: not read
    timeline = Timeline.read(tmp_path, steps_per_epoch=5, global_batch=64)
    assert [a.pid for a in timeline.attempts] == [100, 200]
    assert timeline.total_steps == 20
    assert timeline.counted()[7] == (20.5, 21.0)  # attempt 2's execution of step 7, not attempt 1's
    assert timeline.goodput() == pytest.approx((6 * 1.0 + 14 * 0.5) / 27)  # counted seconds over t=0..27
    assert timeline.lost_steps(10.5) == 4  # steps 6-9 trained twice
    assert timeline.lost_steps(50.0) is None  # nothing resumed after that moment
    assert timeline.after(10.5) is timeline.attempts[1]


def test_training_time_leaves_out_the_first_epoch(tmp_path: Path) -> None:
    write_steps(tmp_path, 0, 100, [(i, i * 2.0, i * 2.0 + 1.5) for i in range(12)])
    timeline = Timeline.read(tmp_path, steps_per_epoch=4, global_batch=8)
    assert timeline.training_seconds() == pytest.approx(23.5 - 8.0)  # steps 4-11
    assert timeline.samples_per_second() == pytest.approx(8 * 8 / 15.5)
    assert timeline.step_gap_ms() == pytest.approx(500.0)


def test_a_lost_node_run_is_judged_from_its_step_files(tmp_path: Path) -> None:
    from bench.contenders import Run
    from bench.lostnode import outcome
    from bench.settings import Job

    # Two workers train steps 0-9 (1 s each); the node goes at t=10.5, the backup was at step 8. One worker goes
    # on from step 8 at t=12 (2 s a step: it carries the whole global batch) up to step 11; the replacement joins
    # at t=18 and two workers train steps 12-19 from t=21.
    two = [(i, float(i), i + 1.0) for i in range(10)]
    write_steps(tmp_path, 0, 100, two)
    write_steps(tmp_path, 1, 101, two)
    write_steps(tmp_path, 0, 200, [(i, 12 + 2.0 * (i - 8), 14 + 2.0 * (i - 8)) for i in range(8, 12)])
    grown = [(i, 21 + (i - 12.0), 22 + (i - 12.0)) for i in range(12, 20)]
    write_steps(tmp_path, 0, 300, grown)
    write_steps(tmp_path, 1, 301, grown)
    job = Job(epochs=5, train_examples=4 * 64, params=1000)  # 4 steps an epoch
    run = Run("orchestrator", "lostnode", 0, job, tmp_path, 0.0, marks={"lost": 10.5, "joined": 18.0})
    result = outcome(run)
    assert result.training_again_s == pytest.approx(1.5)  # t=12: the one worker's first step
    assert result.full_size_s == pytest.approx(3.0)  # t=21: the first step of a group with a rank 1
    assert result.useful_samples_per_s == pytest.approx(20 * 64 / 29.0)  # steps 0-19 counted, t=0..29
    assert result.steady_samples_per_s == pytest.approx(6 * 64 / 6.0)  # steps 4-9, before the loss
    run.marks.pop("joined")  # the job ended before a replacement came
    assert outcome(run).full_size_s is None


def _sleeper(ignore_sigterm: bool) -> subprocess.Popen[bytes]:
    code = "import signal, time\n"
    if ignore_sigterm:  # as TensorFlow's coordination service makes a worker under MWMS do
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    return subprocess.Popen(
        [sys.executable, "-c", code + "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE
    )


@pytest.mark.parametrize("kind", ["kill", "notice"])
def test_the_schedule_signals_a_worker_after_t_seconds_of_training(tmp_path: Path, kind: str) -> None:
    worker = _sleeper(ignore_sigterm=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
        now = time.time()
        write_steps(tmp_path, 1, worker.pid, [(i, now + 0.01 * i, now + 0.01 * i + 0.005) for i in range(8)])
        preempter = Preempter(
            steps_dir=tmp_path,
            kind=kind,
            calibration=Calibration(every_s=0.3),
            steps_per_epoch=4,
            total_steps=1000,
            max_count=3,
            ranks=[1],
            deadline_s=0.5,
        ).start()
        assert worker.wait(timeout=10) == -signal.SIGKILL  # SIGTERM is ignored: the notice period ends in a SIGKILL
        sent = preempter.stop()
    finally:
        worker.kill()
    assert len(sent) == 1  # the group was signalled once; no new group appeared
    assert sent[0].pid == worker.pid and sent[0].rank == 1 and sent[0].kind == kind
    assert sent[0].at - now >= 0.3
    assert sent[0].forced is (kind == "notice")


def test_the_readme_block_is_replaced_with_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nplaceholder\n{README_END}\n\n## after\n")
    figure = Figure("goodput_kill", "goodput", "%", [91.0, 93.5, 92.0], [70.0, 72.0, 71.0], target=">= 90%", met=True)
    write_readme(readme, markdown([figure], "title"))
    text = readme.read_text()
    assert "placeholder" not in text and text.endswith("\n\n## after\n")
    assert "| goodput (%) | 92.0 [91.0-93.5] | 71.0 [70.0-72.0] | 1.30 | >= 90% | yes |" in text
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench:begin"):
        write_readme(readme, "table")


def test_the_table_lives_in_bench_readme_and_write_readme_replaces_it_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import run

    assert run.README == REPO / "bench" / "README.md"
    text = run.README.read_text()
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    assert text.index(README_BEGIN) < text.index(README_END)
    assert README_BEGIN not in (REPO / "README.md").read_text()  # the front page quotes headline figures only
    copy = tmp_path / "README.md"
    copy.write_text(text)
    monkeypatch.setattr(run, "README", copy)
    figure = Figure("goodput_kill", "goodput", "%", [91.0, 93.5, 92.0], [70.0, 72.0, 71.0], target=">= 90%", met=True)
    saved = tmp_path / "saved.json"
    saved.write_text(
        json.dumps(
            {
                "command": "python -m bench --only goodput",
                "seconds": 60.0,
                "rounds": 3,
                "smoke": False,
                "figures": {figure.key: figure.as_json()},
            }
        )
    )
    assert run.main(["--from-json", str(saved), "--write-readme"]) == 0
    written = copy.read_text()
    assert "| goodput (%) | 92.0 [91.0-93.5] | 71.0 [70.0-72.0] | 1.30 | >= 90% | yes |" in written
    before, after = text.split(README_BEGIN)[0], text.split(README_END)[1]
    assert written.startswith(before) and written.endswith(after)  # only the block between the markers changed
    assert "`python -m bench --only goodput`, 60.0 s" in written


def test_saved_runs_are_merged_a_later_figure_replacing_the_same_earlier_one() -> None:
    from bench.run import merged

    def document(command: str, seconds: float, figures: list[Figure]) -> dict[str, object]:
        return {
            "command": command,
            "seconds": seconds,
            "rounds": 3,
            "smoke": False,
            "figures": {f.key: f.as_json() for f in figures},
        }

    old_goodput = Figure("goodput_notice", "goodput", "%", [75.0, 76.0, 74.0], [78.0, 79.0, 77.0], met=False)
    throughput = Figure("throughput", "throughput", "samples/s", [2100.0, 2150.0, 2140.0], [2145.0, 2140.0, 2130.0])
    new_goodput = Figure("goodput_notice", "goodput", "%", [84.0, 85.0, 83.0], [78.0, 79.0, 77.0], met=False)
    scale = Figure("scale_0_resume", "scale", "s", [10.0, 11.0, 12.0], [10.5, 11.5, 12.5])
    figures, combined = merged(
        [
            document("python -m bench --only goodput,throughput", 4969.0, [old_goodput, throughput]),
            document("python -m bench --only goodput", 2400.0, [new_goodput]),
            document("python -m bench --only scale", 1800.0, [scale]),
        ]
    )
    assert [f.key for f in figures] == ["goodput_notice", "throughput", "scale_0_resume"]
    assert figures[0].orchestrator == [84.0, 85.0, 83.0] and figures[1].orchestrator == throughput.orchestrator
    assert combined["rounds"] == 3 and combined["smoke"] is False
    assert [s["command"] for s in combined["sources"]] == [  # type: ignore[index]
        "python -m bench --only goodput,throughput",
        "python -m bench --only goodput",
        "python -m bench --only scale",
    ]


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``python -m bench --smoke --out ... <args>``: the results document and the printed output."""
    out = tmp_path / "smoke.json"
    log = tmp_path / "bench.log"
    with log.open("w") as sink:  # a file, not a pipe: Ray's output must never block the bench
        finished = subprocess.run(
            [sys.executable, "-m", "bench", "--smoke", "--out", str(out), *args],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=False,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
    output = log.read_text(errors="replace")
    assert finished.returncode == 0, output[-4000:]
    document: dict[str, Any] = json.loads(out.read_text())
    failed = [run for run in document["runs"] if run["error"]]
    assert not failed, failed
    return document, output


def assert_figures_for_both_contenders(document: dict[str, Any], keys: tuple[str, ...], output: str) -> None:
    figures = document["figures"]
    assert sorted(set(keys) - set(figures)) == [], output[-4000:]
    for key in keys:
        for contender in ("orchestrator", "baseline"):
            spread = figures[key][contender]
            assert spread is not None and spread["values"], f"{key}: no value for the {contender}"
            assert all(math.isfinite(value) for value in spread["values"]), (key, contender, spread)


@pytest.mark.integration
def test_a_short_bench_run_reports_its_figures_for_both_contenders(tmp_path: Path) -> None:
    """The short form, in every run of the suite: the scale section of the smoke (one small job per contender,
    each killed once and resumed), through the same runners, preempter, timelines and report as the full bench."""
    document, output = run_bench(tmp_path, "--only", "scale")
    assert_figures_for_both_contenders(document, ("scale_0_checkpoint", "scale_0_resume"), output)
    assert {run["contender"] for run in document["runs"]} == {"orchestrator", "baseline"}


@pytest.mark.integration
@pytest.mark.skipif(os.environ.get("BENCH_SMOKE") != "1", reason="10 to 12 minutes on 2 cores: set BENCH_SMOKE=1")
def test_bench_smoke_reports_every_figure_for_both_contenders(tmp_path: Path) -> None:
    document, output = run_bench(tmp_path)
    assert_figures_for_both_contenders(document, FIGURES, output)
    assert "throughput, no backups" in output  # the table was printed


def test_the_goodput_targets_follow_the_preemption_interval() -> None:
    from bench.figures import goodput_minimum

    assert (goodput_minimum("kill", 120.0), goodput_minimum("notice", 120.0)) == (95.0, 98.0)  # T = 2 minutes
    assert (goodput_minimum("kill", 63.1), goodput_minimum("notice", 63.1)) == (85.0, 90.0)  # the calibrated T
    assert goodput_minimum("kill", None) == 85.0  # not calibrated yet: the short-T target
