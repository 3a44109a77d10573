"""The job spec and its error messages: every problem one line with the YAML line, path, value and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import FunctionModel, JobSpec, NpzData, ResNetModel
from orchestrator.spec_loader import load_spec
from tests.conftest import JOBS, quickstart_raw, write_spec


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.problems


def spec_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_spec_is_valid(path: Path) -> None:
    if "sweep" in yaml.safe_load(path.read_text()):
        from orchestrator.sweep import load_sweep

        specs = load_sweep(path)
        assert len(specs) >= 2 and all(spec.epochs >= 1 for spec in specs)
        return
    spec = load_spec(path)
    assert spec.epochs >= 1


def test_the_optimizer_comparison_has_the_five_optimizers_with_early_stopping() -> None:
    from orchestrator.sweep import load_sweep

    specs = load_sweep(JOBS / "optimizer_comparison.yaml")
    assert [s.optimizer.name for s in specs] == ["adam", "adagrad", "rmsprop", "nadam", "sgd"]
    assert specs[0].name == "optimizers-adam"
    assert all(s.callbacks.early_stopping and s.callbacks.early_stopping.patience == 5 for s in specs)
    plateau = specs[0].lr_schedule.reduce_on_plateau
    assert plateau is not None and (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 3, 1e-5)


def test_a_sweep_reports_every_bad_variant_before_anything_runs(tmp_path: Path) -> None:
    from orchestrator.errors import SpecError
    from orchestrator.sweep import load_sweep

    raw = yaml.safe_load((JOBS / "optimizer_comparison.yaml").read_text())
    raw["variants"][1]["optimizer"]["learning_rate"] = -1
    raw["variants"].append({"name": "adam", "optimizer": {"name": "adam"}})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as caught:
        load_sweep(path)
    problems = caught.value.problems
    assert any(p.startswith("variant adagrad: ") and "optimizer.learning_rate: got -1" in p for p in problems)
    assert any("variants[5].name: got 'adam', must be unique" in p for p in problems)


def test_quickstart_is_two_workers_of_a_small_cnn_on_synthetic_data() -> None:
    spec = load_spec(JOBS / "quickstart.yaml")
    assert spec.scaling.workers == 2
    assert spec.model.recipe == "small_cnn"  # type: ignore[union-attr]
    assert spec.data.kind == "synthetic"


def test_name_option_overrides_the_spec_name() -> None:
    assert load_spec(JOBS / "quickstart.yaml", name="second-try").name == "second-try"


def test_negative_learning_rate_names_line_path_value_and_rule(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["optimizer"]["learning_rate"] = -0.1
    path = write_spec(tmp_path, raw)
    line = path.read_text().splitlines().index("  learning_rate: -0.1") + 1
    assert problems_of(path) == [f"line {line}: optimizer.learning_rate: got -0.1, must be greater than 0"]


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_learning_rate_must_be_finite(tmp_path: Path, value: str) -> None:
    text = (JOBS / "quickstart.yaml").read_text().replace("learning_rate: 0.001", f"learning_rate: {value}")
    [problem] = problems_of(spec_text(tmp_path, text))
    assert "optimizer.learning_rate" in problem and "finite" in problem


def test_unknown_key_is_an_error_with_did_you_mean(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["optimizer"]["lerning_rate"] = raw["optimizer"].pop("learning_rate")
    raw["epoch"] = raw.pop("epochs")
    problems = problems_of(write_spec(tmp_path, raw))
    assert any("optimizer.lerning_rate: unknown key; did you mean 'learning_rate'?" in p for p in problems)
    assert any("epoch: unknown key; did you mean 'epochs'?" in p for p in problems)
    assert any(p.endswith("epochs: missing, required") for p in problems)


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["scaling"]["zzz"] = 1
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "scaling.zzz: unknown key; allowed keys: workers, cpus_per_worker, gpus_per_worker" in problem


def test_unknown_recipe_suggests_the_closest(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"recipe": "resnett"}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "model.recipe: got 'resnett', must be one of small_cnn, resnet, dense" in problem
    assert "did you mean 'resnet'?" in problem


def test_unknown_optimizer_and_loss_suggest_the_closest(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["optimizer"] = {"name": "adamw"}
    raw["loss"] = "categorical_crossentropyy"
    problems = problems_of(write_spec(tmp_path, raw))
    assert any("optimizer.name: got 'adamw'" in p and "did you mean 'adam'?" in p for p in problems)
    assert any(
        "loss: got 'categorical_crossentropyy'" in p and "did you mean 'categorical_crossentropy'?" in p
        for p in problems
    )


def test_model_needs_a_recipe_or_a_function(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"conv_filters": [8]}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "model: needs one of the keys 'recipe' or 'function'" in problem


def test_several_problems_are_all_reported_at_once(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["epochs"] = 0
    raw["batch_size"] = -1
    raw["data"]["num_classes"] = 1
    problems = problems_of(write_spec(tmp_path, raw))
    assert len(problems) == 3
    assert {p.split(": ")[1] for p in problems} == {"epochs", "batch_size", "data.num_classes"}


def test_job_name_rule_is_stated_in_words(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["name"] = "../Quick Start"
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "name: got '../Quick Start', must be 1-63 characters of a-z, 0-9 and '-'" in problem


def test_batch_size_must_split_evenly_across_replicas(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["batch_size"] = 63
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "batch_size: got 63, must be divisible by the number of replicas (2 = 2 workers" in problem
    assert problem.startswith(f"line {write_spec(tmp_path, raw).read_text().splitlines().index('batch_size: 63') + 1}:")


def test_binary_crossentropy_needs_two_classes(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["loss"] = "binary_crossentropy"
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "loss: got binary_crossentropy, but data has 10 classes" in problem
    raw["data"]["num_classes"] = 2
    assert load_spec(write_spec(tmp_path, raw)).loss == "binary_crossentropy"


def test_resnet_filters_must_match_stages(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"recipe": "resnet", "stages": [3, 3], "filters": [16, 16]}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "model.filters: got 2 values, must have len(stages) + 1 = 3" in problem
    raw["model"]["filters"] = [16, 16, 32]
    assert isinstance(load_spec(write_spec(tmp_path, raw)).model, ResNetModel)


def test_duplicate_metrics_are_refused(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["metrics"] = ["accuracy", "auc", "accuracy"]
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "metrics: lists accuracy more than once" in problem


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = spec_text(tmp_path, "name: x\nmodel: {recipe: small_cnn\ndata: y\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == f"{path}:3:5"
    assert caught.value.problems[0].startswith("malformed YAML: ")


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- a\n- b\n", "a list")])
def test_spec_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    [problem] = problems_of(spec_text(tmp_path, text))
    assert problem.startswith(f"got {got}, a job spec must be a YAML mapping")


def test_missing_file_lists_the_specs_beside_it(tmp_path: Path) -> None:
    write_spec(tmp_path, quickstart_raw(), "real.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "typo.yaml")
    assert caught.value.problems == ["file not found"]
    assert caught.value.hint == f"specs in {tmp_path}/: real.yaml"


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"function": "code/model.py:build", "params": {"width": 4}}
    raw["data"] = {"kind": "npz", "url": "data/set.npz"}
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "model.py").write_text("def build(input_shape, num_classes, width): ...\n")
    spec = load_spec(write_spec(tmp_path, raw))
    assert isinstance(spec.model, FunctionModel) and isinstance(spec.data, NpzData)
    assert spec.model.file == str(tmp_path / "code" / "model.py")
    assert spec.model.attribute == "build"
    assert spec.data.url == str(tmp_path / "data" / "set.npz")


def test_urls_with_a_scheme_are_left_alone(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["data"] = {"kind": "npz", "url": "gs://bucket/set.npz"}
    assert load_spec(write_spec(tmp_path, raw)).data.url == "gs://bucket/set.npz"  # type: ignore[union-attr]


def test_function_must_name_a_python_file_and_function(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"function": "model.build"}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "model.function: got 'model.build', must be 'path/to/file.py:function_name'" in problem


def test_schema_covers_every_section() -> None:
    schema = JobSpec.model_json_schema()
    json.dumps(schema)
    assert {"name", "model", "data", "optimizer", "loss", "epochs", "batch_size", "scaling"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"name", "model", "data", "optimizer", "epochs", "batch_size"}


def test_an_extra_key_beside_function_is_named_with_where_it_belongs(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"function": "my.py:build", "width": 16}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "model.width: unknown key; allowed keys: function, params" in problem


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [
        ("image_shape", [28, 28], "data.image_shape: got [28, 28], needs a value at position 3"),
        ("image_shape", [28, 28, 1, 1], "data.image_shape: got [28, 28, 1, 1], must have at most 3 items, not 4"),
    ],
)
def test_wrong_number_of_values_says_what_is_expected(
    tmp_path: Path, section: str, value: list[int], expected: str
) -> None:
    raw = quickstart_raw()
    raw["data"][section] = value
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert expected in problem


def test_seed_must_fit_the_random_generators(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["seed"] = -1
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "seed: got -1, must be greater than or equal to 0" in problem
    raw["seed"] = 2**32
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "seed: got 4294967296, must be less than 4294967296" in problem


def test_thresholded_metrics_need_one_hot_or_binary_labels(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["metrics"] = ["accuracy", "auc", "precision"]
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "metrics: got auc, precision with loss sparse_categorical_crossentropy" in problem
    assert "use loss categorical_crossentropy" in problem
    raw["loss"] = "categorical_crossentropy"
    assert load_spec(write_spec(tmp_path, raw)).metrics == ["accuracy", "auc", "precision"]


def test_acc_is_keras_short_name_for_accuracy(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["metrics"] = ["acc"]
    assert load_spec(write_spec(tmp_path, raw)).metrics == ["accuracy"]


def test_batch_larger_than_the_training_data_is_refused(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["data"]["train_examples"] = 100
    assert load_spec(write_spec(tmp_path, raw)).batch_size == 64
    raw["batch_size"] = 128
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "batch_size: got 128, more than the 100 training examples" in problem


def test_validation_smaller_than_a_batch_is_refused_not_silently_skipped(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["data"]["validation_examples"] = 50
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "data.validation_examples: gives 50 validation examples, fewer than one global batch (64)" in problem
    raw["data"]["validation_examples"] = 0
    assert load_spec(write_spec(tmp_path, raw)).data.validation_examples == 0  # type: ignore[union-attr]
    raw["data"] = {"kind": "keras", "name": "mnist", "validation_split": 0.001}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "data.validation_split: gives 60 validation examples" in problem


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert problems_of(path) == ["not UTF-8 text (byte 9): save the spec as UTF-8"]


def test_set_overrides_fields_by_dotted_key_with_yaml_values() -> None:
    from orchestrator.spec_loader import load_spec

    spec = load_spec(
        JOBS / "fashion_mnist_resnet.yaml",
        overrides=[
            "epochs=3",
            "data={kind: synthetic, image_shape: [32, 32, 1]}",
            "model.stages=[1, 1, 1]",
            "lr_schedule.drops=[{at_epoch: 1, lr: 0.01}, {at_epoch: 2, factor: 0.1}]",
        ],
    )
    assert spec.epochs == 3 and spec.data.kind == "synthetic" and spec.model.stages == [1, 1, 1]  # type: ignore[union-attr]
    assert spec.optimizer.learning_rate == 0.1  # the rest is the spec as written


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs", "must be KEY=VALUE"),
        ("epochs=-1", "epochs: got -1"),
        ("name.first=x", "name is not a mapping"),
        ("optimizer.learning_rate=[1", "is not YAML"),
    ],
)
def test_a_bad_override_is_one_clear_line(override: str, message: str) -> None:
    from orchestrator.errors import SpecError
    from orchestrator.spec_loader import load_spec

    with pytest.raises(SpecError) as caught:
        load_spec(JOBS / "quickstart.yaml", overrides=[override])
    assert message in str(caught.value) + " ".join(getattr(caught.value, "problems", []))


def image_folder_raw(**data: object) -> dict[str, object]:
    raw = quickstart_raw()
    raw["data"] = {"kind": "image_folder", "url": "images", "image_size": [32, 48], **data}
    return raw


def test_an_image_folder_spec_with_augmentation_resolves_its_url_against_the_spec_folder(tmp_path: Path) -> None:
    from orchestrator.spec import ImageFolderData

    augmentation = {"rotation": 20, "width_shift": 0.1, "zoom": 0.2, "horizontal_flip": True}
    spec = load_spec(write_spec(tmp_path, image_folder_raw(channels=1, augmentation=augmentation)))
    assert isinstance(spec.data, ImageFolderData)
    assert spec.data.url == str(tmp_path / "images") and spec.data.image_size == (32, 48)
    assert spec.data.channels == 1 and spec.data.augmentation is not None
    assert spec.data.augmentation.rotation == 20 and spec.data.augmentation.vertical_flip is False
    assert spec.data.augmentation.shear == 0 and spec.data.augmentation.height_shift == 0
    assert "val_accuracy" in spec.logged_metrics()  # an image folder always has val/
    plain = load_spec(write_spec(tmp_path, image_folder_raw(url="gs://bucket/images")))
    assert isinstance(plain.data, ImageFolderData) and plain.data.url == "gs://bucket/images"
    assert plain.data.channels == 3 and plain.data.augmentation is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"augmentation": {"width_shift": 1.0}}, "data.augmentation.width_shift: got 1.0, must be less than 1"),
        ({"augmentation": {"rotation": -5}}, "data.augmentation.rotation: got -5, must be greater than or equal"),
        ({"augmentation": {"flip": True}}, "data.augmentation.flip"),
        ({"channels": 4}, "data.channels: got 4"),
        ({"image_size": [32]}, "data.image_size"),
    ],
)
def test_a_bad_image_folder_field_is_one_line(tmp_path: Path, data: dict[str, object], message: str) -> None:
    [problem] = problems_of(write_spec(tmp_path, image_folder_raw(**data)))
    assert message in problem


def test_binary_crossentropy_on_synthetic_data_names_data_num_classes(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["loss"] = "binary_crossentropy"
    raw["data"]["num_classes"] = 3
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "loss: got binary_crossentropy, but data has 3 classes (data.num_classes), it needs 2" in problem
    assert "\n" not in problem


def transfer_raw(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = yaml.safe_load((JOBS / "transfer_learning.yaml").read_text())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"epochs": 12}, "phases: their epochs add up to 15 (5 + 10), but epochs is 12"),
        ({"phases": [{"name": "a", "epochs": 5}, {"name": "a", "epochs": 10}]}, "name 'a' is used twice"),
        ({"model": {"recipe": "small_cnn"}}, "unfreeze_top needs a model with a base to unfreeze"),
        ({"model": {"recipe": "keras_application", "application": "EfficientNetB9"}}, "must be one of ConvNeXtTiny"),
        ({"model": {"recipe": "keras_application", "alpha": 0.5}}, "only MobileNet applications take a width"),
        ({"phases": [{"name": "a", "epochs": 15, "unfreeze_top": -1}]}, "unfreeze_top"),
    ],
)
def test_phase_and_application_mistakes_are_one_line_each(
    tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    problems = problems_of(write_spec(tmp_path, transfer_raw(**changes)))
    assert len(problems) == 1 and expected in problems[0], problems


def test_phases_give_each_epoch_its_phase_optimizer_and_a_relative_weights_file_is_resolved(tmp_path: Path) -> None:
    raw = transfer_raw()
    raw["model"] = {**raw["model"], "weights": "weights/base.h5"}  # type: ignore[dict-item]
    spec = load_spec(write_spec(tmp_path, raw))
    assert spec.phase_starts() == [0, 5] and [spec.phase_at(e) for e in (0, 4, 5, 14)] == [0, 0, 1, 1]
    assert spec.phase_optimizer(0).learning_rate == 1e-3 and spec.phase_optimizer(1).learning_rate == 1e-5
    assert spec.model.weights == str((tmp_path / "weights" / "base.h5").resolve())  # type: ignore[union-attr]
    plain = load_spec(JOBS / "quickstart.yaml")
    assert plain.phase_starts() == [0] and plain.phase_optimizer(0) == plain.optimizer


def test_a_key_given_twice_is_refused_with_both_lines_instead_of_the_last_winning(tmp_path: Path) -> None:
    text = (JOBS / "quickstart.yaml").read_text()
    text = text.replace("  learning_rate: 0.001", "  learning_rate: 0.001\n  learning_rate: 10.0", 1)
    text += "epochs: 7\n"
    assert yaml.safe_load(text)["optimizer"]["learning_rate"] == 10.0  # what PyYAML alone would train with
    problems = problems_of(spec_text(tmp_path, text))
    assert problems == [
        "line 20: optimizer.learning_rate: given twice (lines 19 and 20); the last would silently win: keep one",
        "line 28: epochs: given twice (lines 23 and 28); the last would silently win: keep one",
    ]


def test_a_merge_key_is_not_a_duplicate(tmp_path: Path) -> None:
    text = (JOBS / "quickstart.yaml").read_text()
    text += "\nx-defaults: &fast {every_epochs: 1, keep: 2}\n"
    raw = yaml.safe_load(text)
    raw.pop("x-defaults")
    text = yaml.safe_dump(raw) + "backup:\n  <<: {every_epochs: 2, keep: 5}\n  keep: 4\n"
    spec = load_spec(spec_text(tmp_path, text))
    assert (spec.backup.every_epochs, spec.backup.keep) == (2, 4)  # the explicit key overrides the merged one


def test_deeply_nested_yaml_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    for depth in (100, 5000):  # deeper than the limit, and deeper than Python's recursion limit
        text = "name: deep\nmodel: {function: m.py:build, params: {x: " + "[" * depth + "]" * depth + "}}\n"
        problems = problems_of(spec_text(tmp_path, text))
        assert len(problems) == 1 and "nested" in problems[0] and "32 levels" in problems[0]


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]  # 10**10 values
    text = "\n".join(lines) + "\nname: bomb\nmodel: {function: m.py:build, params: {x: *a9}}\n"
    problems = problems_of(spec_text(tmp_path, text))
    assert len(problems) == 1 and "more than 20,000 values once its aliases" in problems[0]


def test_an_empty_data_url_is_refused_not_turned_into_the_spec_folder(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["data"] = {"kind": "npz", "url": ""}
    (problem,) = problems_of(write_spec(tmp_path, raw))
    assert "data.url: got '', must be a local path or a URL" in problem


@pytest.mark.parametrize("url", ["foo://bucket/set.npz", "gopher://host/set.npz", "simplecache::nope://b/x.npz"])
def test_a_url_whose_scheme_no_filesystem_serves_is_refused(tmp_path: Path, url: str) -> None:
    raw = quickstart_raw()
    raw["data"] = {"kind": "npz", "url": url}
    (problem,) = problems_of(write_spec(tmp_path, raw))
    scheme = url.split("::")[-1].split("://")[0]
    assert f"data.url: got {url!r}: no filesystem serves {scheme}://" in problem and "gs://" in problem


def test_a_model_function_file_that_does_not_exist_is_refused_at_validation(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["model"] = {"function": "models/net.py:build"}
    (problem,) = problems_of(write_spec(tmp_path, raw))
    assert f"model.function: the file {tmp_path / 'models' / 'net.py'} does not exist" in problem
    assert problem.startswith("line ")
    (tmp_path / "models" / "net.py").mkdir(parents=True)
    (problem,) = problems_of(write_spec(tmp_path, raw))
    assert "is a folder" in problem


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (("epochs",), True, "epochs: got True, must be a valid integer"),
        (("batch_size",), 2.5, "batch_size: got 2.5, must be a valid integer"),
        (("epochs",), 2**64, "epochs: got 18446744073709551616, must be less than or equal to 9223372036854775807"),
        (("optimizer", "learning_rate"), True, "optimizer.learning_rate: got true, must be a number, not true/false"),
        (("deterministic",), 1, "deterministic: got 1, must be a valid boolean"),
        (("data", "image_shape"), [28, 28, True], "data.image_shape[2]: got True, must be a valid integer"),
        (("scaling", "gpus_per_worker"), False, "scaling.gpus_per_worker: got False, must be a valid integer"),
    ],
)
def test_yaml_booleans_and_huge_integers_are_not_taken_as_numbers(
    tmp_path: Path, field: tuple[str, ...], value: object, expected: str
) -> None:
    raw = quickstart_raw()
    node = raw
    for part in field[:-1]:
        node = node.setdefault(part, {})
    node[field[-1]] = value
    problems = problems_of(write_spec(tmp_path, raw))
    assert any(expected in problem for problem in problems), problems


def test_terminate_on_nan_is_on_by_default_configurable_and_can_be_turned_off(tmp_path: Path) -> None:
    raw = quickstart_raw()
    default = load_spec(write_spec(tmp_path, raw)).callbacks.terminate_on_nan
    assert default is not None and default.patience_steps == 1
    raw["callbacks"] = {"terminate_on_nan": {"patience_steps": 20}}
    configured = load_spec(write_spec(tmp_path, raw)).callbacks.terminate_on_nan
    assert configured is not None and configured.patience_steps == 20
    raw["callbacks"] = {"terminate_on_nan": None}
    assert load_spec(write_spec(tmp_path, raw)).callbacks.terminate_on_nan is None
    raw["callbacks"] = {"terminate_on_nan": {"patience_steps": 0}}
    (problem,) = problems_of(write_spec(tmp_path, raw))
    assert "callbacks.terminate_on_nan.patience_steps: got 0, must be greater than 0" in problem


def test_min_workers_makes_a_job_elastic_within_the_sizes_that_split_the_batch(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["scaling"] = {"workers": 4, "min_workers": 1}
    raw["batch_size"] = 64
    spec = JobSpec.model_validate(raw)
    assert spec.scaling.elastic and spec.scaling.sizes(spec.batch_size) == [4, 2, 1]  # 3 does not split 64
    raw["batch_size"] = 60
    assert JobSpec.model_validate(raw).scaling.sizes(60) == [4, 3, 2, 1]
    raw["scaling"] = {"workers": 2}
    fixed = JobSpec.model_validate(raw).scaling
    assert not fixed.elastic and fixed.sizes(60) == [2]
    raw["scaling"] = {"workers": 2, "min_workers": 2}
    assert not JobSpec.model_validate(raw).scaling.elastic


@pytest.mark.parametrize(
    ("scaling", "batch", "expected"),
    [
        (
            {"workers": 2, "min_workers": 3},
            64,
            "scaling.min_workers: got 3, more than scaling.workers (2); give a number from 1 to 2",
        ),
        ({"workers": 2, "min_workers": 0}, 64, "scaling.min_workers: got 0, must be greater than 0"),
        (
            {"workers": 4, "min_workers": 3},
            64,
            "scaling.min_workers: got 3, but batch_size 64 does not split evenly over 3 replicas",
        ),
    ],
)
def test_min_workers_out_of_range_is_a_one_line_error(
    tmp_path: Path, scaling: dict[str, int], batch: int, expected: str
) -> None:
    raw = quickstart_raw()
    raw.update(scaling=scaling, batch_size=batch)
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert expected in problem and problem.startswith("line ")
