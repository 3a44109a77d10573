"""Built-in model builders (tf_keras). Each takes the spec's model section, the input shape and class count.

The output layer follows the loss: one sigmoid unit for binary crossentropy, else a softmax over classes. It
computes in float32 whatever the precision policy (``precision: mixed_float16`` builds the other layers in
float16): a softmax and the loss in float16 lose the small probabilities. A user's model function should build its
last layer with ``dtype="float32"`` too; where it does not, the worker adds a float32 cast after it.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

from orchestrator.errors import DataError, SpecError, UserCodeError
from orchestrator.spec import (
    KERAS_APPLICATIONS,
    CallableModel,
    DenseModel,
    FunctionModel,
    JobSpec,
    KerasApplicationModel,
    ResNetModel,
    SmallCNNModel,
)

USER_TRACEBACK_LINES = 10


def build_model(
    spec: SmallCNNModel | ResNetModel | DenseModel | KerasApplicationModel | FunctionModel | CallableModel,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    binary: bool,
) -> Any:
    """Build an uncompiled tf_keras model for ``spec``; call inside the distribution strategy's scope."""
    if isinstance(spec, FunctionModel):
        return _from_function(spec, input_shape, num_classes)
    if isinstance(spec, CallableModel):
        return _from_callable(spec, input_shape, num_classes)
    import tf_keras as keras

    inputs = keras.Input(shape=input_shape)
    if isinstance(spec, SmallCNNModel):
        features = _small_cnn(keras, inputs, spec)
    elif isinstance(spec, ResNetModel):
        features = _resnet(keras, inputs, spec)
    elif isinstance(spec, KerasApplicationModel):
        features = _application_head(keras, inputs, spec, input_shape)
    else:
        features = _dense(keras, inputs, spec)
    outputs = (
        keras.layers.Dense(1, activation="sigmoid", name="output", dtype="float32")(features)
        if binary
        else keras.layers.Dense(num_classes, activation="softmax", name="output", dtype="float32")(features)
    )
    name = spec.recipe
    return keras.Model(inputs, outputs, name=name)


def _application_head(keras: Any, inputs: Any, spec: KerasApplicationModel, input_shape: tuple[int, ...]) -> Any:
    """Input scaling the base expects, the base in inference mode (``training=False``: its BatchNormalization
    layers never switch to batch statistics, frozen or not), then pooling, BatchNormalization and Dropout."""
    layers = keras.layers
    base = application_base(spec, input_shape)
    base.trainable = False  # the phases decide what trains (configure_phase)
    scaling = KERAS_APPLICATIONS[spec.application]
    if scaling == "0-255":
        x = layers.Rescaling(255.0, name="to_0_255")(inputs)
    elif scaling == "-1..1":
        x = layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    else:
        channels = input_shape[-1]
        mean, std = [0.485, 0.456, 0.406][:channels], [0.229, 0.224, 0.225][:channels]
        x = layers.Normalization(mean=mean, variance=[s * s for s in std], name="imagenet_normalization")(inputs)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x) if spec.pooling == "avg" else layers.GlobalMaxPooling2D()(x)
    if spec.head_batch_norm:
        x = layers.BatchNormalization(name="head_bn")(x)
    return layers.Dropout(spec.head_dropout, name="head_dropout")(x) if spec.head_dropout else x


def application_base(spec: KerasApplicationModel, input_shape: tuple[int, ...]) -> Any:
    """The application without its top, with the spec's weights (ImageNet, a file at an fsspec URL, or none)."""
    import tf_keras as keras

    channels = input_shape[-1]
    if spec.weights == "imagenet" and channels != 3:
        raise SpecError("model.weights", [f"imagenet weights need 3-channel images; the data has {channels}"])
    options: dict[str, Any] = {"include_top": False, "input_shape": input_shape, "weights": None}
    if spec.alpha is not None:
        options["alpha"] = spec.alpha
    if spec.weights == "imagenet":
        options["weights"] = "imagenet"
    try:
        base = getattr(keras.applications, spec.application)(**options)
    except ValueError as exc:  # input shape too small, alpha not offered for these weights, ...
        raise SpecError("model.application", [f"{spec.application}: {str(exc).splitlines()[0]}"]) from None
    except Exception as exc:  # urllib/socket/http errors: the ImageNet weights could not be downloaded
        raise DataError(
            f"model.weights: could not download the imagenet weights of {spec.application} "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            hint="without internet on the workers, save the base's weights once (base.save_weights('base.h5')) "
            "where they can read them and set model.weights to that URL, or use weights: none",
        ) from None
    base._name = "base"  # one name whatever the application: configure_phase and the tests find it by it
    if spec.weights not in ("imagenet", "none"):
        _load_base_weights(base, spec.weights)
    return base


def _load_base_weights(base: Any, url: str) -> None:
    import os
    import tempfile

    import fsspec

    suffix = os.path.splitext(url)[1] or ".h5"
    with tempfile.TemporaryDirectory(prefix="orchestrator-weights-") as scratch:
        local = os.path.join(scratch, f"base{suffix}")
        try:
            with fsspec.open(url, "rb") as source, open(local, "wb") as target:
                target.write(source.read())
        except (OSError, ValueError) as exc:
            raise DataError(
                f"model.weights: cannot read {url}: {exc}",
                hint="a weights file written by base.save_weights(...), at a path or fsspec URL",
            ) from None
        try:
            base.load_weights(local)
        except Exception as exc:  # h5py / shape mismatch errors
            raise DataError(
                f"model.weights: {url} does not fit the base: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                hint="the file must come from the same application, alpha and input channels (base.save_weights)",
            ) from None


def configure_phase(model: Any, spec: JobSpec, phase: int) -> str:
    """Set what trains in ``phase``: the base's top ``unfreeze_top`` layers except BatchNormalization (frozen
    layers keep their moving statistics; the base runs with ``training=False`` in any case), plus the head."""
    import tf_keras as keras

    bases = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name == "base"]
    if not bases:
        return "every layer trains"
    base = bases[0]
    unfreeze = spec.phases[phase].unfreeze_top if spec.phases else 0
    layers = base.layers
    chosen = layers if unfreeze == "all" else layers[len(layers) - unfreeze :] if unfreeze else []
    base.trainable = True  # so that the flags of its layers count
    for layer in layers:
        layer.trainable = False
    opened = [layer for layer in chosen if not isinstance(layer, keras.layers.BatchNormalization)]
    for layer in opened:
        layer.trainable = True
    if not opened:
        base.trainable = False
        return f"base frozen ({len(layers)} layers); the head trains"
    weights = sum(int(v.shape.num_elements()) for v in base.trainable_weights)
    return (
        f"top {len(chosen)} of {len(layers)} base layers unfrozen ({len(opened)} trainable, "
        f"{len(chosen) - len(opened)} BatchNormalization kept frozen; {weights} base weights train)"
    )


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
    return _call_builder(
        builder, f"model.function {path.name}:{spec.attribute}", f"fix {path}", input_shape, num_classes, spec.params
    )


def _from_callable(spec: CallableModel, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The Python function given to ``orchestrator.run(model_fn=...)``, from the pickle the runner stored."""
    if spec.builder is not None:  # this process was given it (a model built where the job was started)
        builder = spec.builder
    elif spec.url is None:
        raise SpecError(
            "model.callable",
            [f"got {spec.callable!r} without the stored function: only orchestrator.run(spec, model_fn=...) runs it"],
        )
    else:
        builder = _load_pickled(spec)
    what = f"model.callable {spec.callable}()"
    return _call_builder(builder, what, f"fix {spec.callable}()", input_shape, num_classes, spec.params)


def _load_pickled(spec: CallableModel) -> Any:
    import fsspec
    from ray import cloudpickle

    assert spec.url is not None
    try:
        with fsspec.open(spec.url, "rb") as handle:
            return cloudpickle.load(handle)
    except FileNotFoundError:
        raise SpecError(
            "model.callable", [f"the stored function {spec.callable}() is missing: {spec.url} does not exist"]
        ) from None
    except Exception as exc:  # what unpickling raises: a module the function needs is not importable here
        raise UserCodeError(
            f"model.callable {spec.callable}(): cannot load the stored function here ({type(exc).__name__}: {exc})",
            hint="the workers import what the function refers to by module: define it in the notebook (pickled by "
            "value) or in a module the workers can import",
        ) from exc


def _call_builder(
    builder: Any, what: str, hint: str, input_shape: tuple[int, ...], num_classes: int, params: dict[str, Any]
) -> Any:
    try:
        return builder(input_shape, num_classes, **params)
    except Exception as exc:  # whatever the user's code raises is the user's to see, with its traceback
        error = UserCodeError(f"{what} raised {type(exc).__name__}: {exc}", hint=hint)
        lines = "".join(traceback.format_exception(exc)).strip().splitlines()
        error.excerpt = "\n".join(lines[-USER_TRACEBACK_LINES:])
        raise error from exc
