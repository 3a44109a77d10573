"""Built-in model builders (tf_keras). Each takes the spec's model section, the input shape and class count.

The output layer follows the loss: one sigmoid unit for binary crossentropy, else a softmax over classes.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

from orchestrator.errors import SpecError, UserCodeError
from orchestrator.spec import DenseModel, FunctionModel, ResNetModel, SmallCNNModel

USER_TRACEBACK_LINES = 10


def build_model(
    spec: SmallCNNModel | ResNetModel | DenseModel | FunctionModel,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    binary: bool,
) -> Any:
    """Build an uncompiled tf_keras model for ``spec``; call inside the distribution strategy's scope."""
    if isinstance(spec, FunctionModel):
        return _from_function(spec, input_shape, num_classes)
    import tf_keras as keras

    inputs = keras.Input(shape=input_shape)
    if isinstance(spec, SmallCNNModel):
        features = _small_cnn(keras, inputs, spec)
    elif isinstance(spec, ResNetModel):
        features = _resnet(keras, inputs, spec)
    else:
        features = _dense(keras, inputs, spec)
    outputs = (
        keras.layers.Dense(1, activation="sigmoid", name="output")(features)
        if binary
        else keras.layers.Dense(num_classes, activation="softmax", name="output")(features)
    )
    name = spec.recipe
    return keras.Model(inputs, outputs, name=name)


def _small_cnn(keras: Any, x: Any, spec: SmallCNNModel) -> Any:
    for filters in spec.conv_filters:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x) if x.shape[1] >= 4 and x.shape[2] >= 4 else x
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(spec.dense_units, activation="relu")(x)
    return keras.layers.Dropout(spec.dropout)(x) if spec.dropout else x


def _dense(keras: Any, x: Any, spec: DenseModel) -> Any:
    x = keras.layers.Flatten()(x)
    for units in spec.hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        if spec.dropout:
            x = keras.layers.Dropout(spec.dropout)(x)
    return x


def _resnet(keras: Any, inputs: Any, spec: ResNetModel) -> Any:
    """The practitioner's CIFAR-style ResNet: BN stem, 3x3 conv, bottleneck residual stages, BN-ReLU, pooling."""
    layers, l2 = keras.layers, keras.regularizers.l2(spec.l2)
    bn = {"epsilon": spec.bn_epsilon, "momentum": spec.bn_momentum}
    x = layers.BatchNormalization(**bn)(inputs)
    x = layers.Conv2D(spec.filters[0], 3, padding="same", use_bias=False, kernel_regularizer=l2)(x)
    for stage, (blocks, filters) in enumerate(zip(spec.stages, spec.filters[1:], strict=True)):
        stride = 1 if stage == 0 else 2
        x = _residual(keras, x, filters, stride, reduce=True, l2=l2, bn=bn)
        for _ in range(blocks - 1):
            x = _residual(keras, x, filters, 1, reduce=False, l2=l2, bn=bn)
    x = layers.BatchNormalization(**bn)(x)
    x = layers.Activation("relu")(x)
    return layers.GlobalAveragePooling2D()(x)


def _residual(keras: Any, x: Any, filters: int, stride: int, *, reduce: bool, l2: Any, bn: dict[str, float]) -> Any:
    """Pre-activation bottleneck: (BN-ReLU-Conv) 1x1 K/4, 3x3 K/4 (strided), 1x1 K; projection when reducing."""
    layers = keras.layers
    shortcut = x
    act1 = layers.Activation("relu")(layers.BatchNormalization(**bn)(x))
    y = layers.Conv2D(max(1, filters // 4), 1, use_bias=False, kernel_regularizer=l2)(act1)
    y = layers.Activation("relu")(layers.BatchNormalization(**bn)(y))
    y = layers.Conv2D(max(1, filters // 4), 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=l2)(y)
    y = layers.Activation("relu")(layers.BatchNormalization(**bn)(y))
    y = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=l2)(y)
    if reduce:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=l2)(act1)
    return layers.add([y, shortcut])


def _from_function(spec: FunctionModel, input_shape: tuple[int, ...], num_classes: int) -> Any:
    path = Path(spec.file)
    if not path.is_file():
        raise SpecError("model.function", [f"got {spec.function!r}, but {path} does not exist"])
    module_name = f"orchestrator_user_model_{abs(hash(str(path)))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise SpecError("model.function", [f"got {spec.function!r}, but {path} cannot be imported"])
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    loader_spec.loader.exec_module(module)
    builder = getattr(module, spec.attribute, None)
    if not callable(builder):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise SpecError(
            "model.function",
            [f"got {spec.function!r}, but {path.name} has no function {spec.attribute!r} (it has: {', '.join(names)})"],
        )
    try:
        return builder(input_shape, num_classes, **spec.params)
    except Exception as exc:  # whatever the user's code raises is the user's to see, with its traceback
        error = UserCodeError(
            f"model.function {path.name}:{spec.attribute} raised {type(exc).__name__}: {exc}", hint=f"fix {path}"
        )
        lines = "".join(traceback.format_exception(exc)).strip().splitlines()
        error.excerpt = "\n".join(lines[-USER_TRACEBACK_LINES:])
        raise error from exc
