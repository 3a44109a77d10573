"""The built-in model recipes, built for real with tf_keras (no Ray)."""

from __future__ import annotations

import os

import pytest

from orchestrator.recipes.models import build_model
from orchestrator.spec import DenseModel, ResNetModel, SmallCNNModel

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def conv_layers(model: object) -> list[object]:
    import tf_keras as keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]  # type: ignore[attr-defined]


def test_practitioner_resnet_has_the_published_structure() -> None:
    model = build_model(ResNetModel(recipe="resnet"), (32, 32, 1), 10, binary=False)
    # stem conv + 27 bottleneck blocks x 3 convs + one projection per stage
    assert len(conv_layers(model)) == 1 + 27 * 3 + 3
    assert model.output_shape == (None, 10)
    strided = [layer for layer in conv_layers(model) if layer.strides == (2, 2)]
    assert len(strided) == 4  # stages 2 and 3 reduce: their first block's 3x3 conv and its projection
    assert model.get_layer(index=-3).output_shape == (None, 8, 8, 256)  # 32 -> 16 -> 8 before pooling
    assert all(layer.kernel_regularizer is not None for layer in conv_layers(model))


def test_small_resnet_and_its_regularisation_follow_the_spec() -> None:
    spec = ResNetModel(recipe="resnet", stages=[1, 2], filters=[8, 16, 32], l2=0.0005)
    model = build_model(spec, (16, 16, 3), 4, binary=False)
    assert len(conv_layers(model)) == 1 + 3 * 3 + 2
    assert conv_layers(model)[0].kernel_regularizer.l2 == pytest.approx(0.0005)
    assert model.output_shape == (None, 4)


def test_binary_loss_gets_one_sigmoid_output() -> None:
    model = build_model(SmallCNNModel(recipe="small_cnn", conv_filters=[4]), (8, 8, 1), 2, binary=True)
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_dense_and_small_cnn_build_for_their_inputs() -> None:
    dense = build_model(DenseModel(recipe="dense", hidden_units=[32, 16], dropout=0.1), (5, 5, 1), 3, binary=False)
    assert [layer.units for layer in dense.layers if hasattr(layer, "units")] == [32, 16, 3]
    cnn = build_model(SmallCNNModel(recipe="small_cnn", conv_filters=[4, 8, 16]), (2, 2, 1), 3, binary=False)
    assert cnn.output_shape == (None, 3)  # pooling stops where the feature map is too small for it
