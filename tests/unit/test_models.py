"""The transfer-learning model (no Ray): an EfficientNetB0 base in inference mode under a pooling/BN/Dropout
head, and what each phase lets train."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import JobSpec
from tests.conftest import JOBS

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def transfer_spec(**model: object) -> JobSpec:
    raw = yaml.safe_load((JOBS / "transfer_learning.yaml").read_text())
    raw["model"].update({"weights": "none", **model})
    raw["data"]["url"] = "/nowhere"
    return JobSpec.model_validate(raw)


def test_fine_tuning_unfreezes_the_top_layers_but_batchnorm_and_the_base_stays_in_inference_mode() -> None:
    import tf_keras as keras

    from orchestrator.recipes.models import build_model, configure_phase

    keras.utils.set_random_seed(0)
    spec = transfer_spec()
    model = build_model(spec.model, (32, 32, 3), 4, binary=False)
    base = model.get_layer("base")
    assert model.get_layer("to_0_255").scale == 255.0 and model.get_layer("head_bn") and model.get_layer("head_dropout")

    assert "base frozen" in configure_phase(model, spec, 0)
    assert not base.trainable_weights and model.trainable_weights  # the head trains
    described = configure_phase(model, spec, 1)
    top = base.layers[-20:]
    opened = [layer for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
    assert f"top 20 of {len(base.layers)} base layers unfrozen ({len(opened)} trainable" in described
    assert {id(v) for v in base.trainable_weights} == {id(v) for layer in opened for v in layer.trainable_weights}

    batchnorms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [layer.moving_mean.numpy().copy() for layer in batchnorms]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    model.train_on_batch(images, np.arange(8) % 4)  # a training step: BN in training mode would move these
    for layer, mean in zip(batchnorms, before, strict=True):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    assert not np.array_equal(model.get_layer("head_bn").moving_mean.numpy(), 0.0)  # the head's BN does learn


def test_imagenet_weights_need_three_channels() -> None:
    from orchestrator.recipes.models import build_model

    with pytest.raises(SpecError) as error:
        build_model(transfer_spec(weights="imagenet").model, (32, 32, 1), 4, binary=False)
    assert "imagenet weights need 3-channel images" in str(error.value.problems)
