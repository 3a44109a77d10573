"""The job spec: what a user writes in YAML, validated up front.

Every part is a pydantic model with ``extra="forbid"``: an unknown key is an error, never silently ignored.
``load_spec`` reads a YAML file and turns every problem into one line that names the file, the line, the
YAML path, the value received and what is accepted, e.g.::

    jobs/x.yaml:12: optimizer.learning_rate: got -0.1, must be greater than 0

Relative paths in a spec (a model's ``function`` file, an ``npz`` or ``image_folder`` URL without a scheme) are
resolved against the spec's own folder when it is loaded, so the stored job record is independent of the working
directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

JOB_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
JOB_NAME_RULE = "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"


class StrictModel(BaseModel):
    """Base for every spec and record: unknown keys are errors, values are immutable.

    NaN and infinity (a diverged loss) are written as the JSON strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``: the file stays valid JSON and reads back as the same float.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


def _not_a_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic would take true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"got {str(value).lower()}, must be a number, not true/false")
    return value


INT64_MAX = 2**63 - 1
# Integers as YAML writes them (not true/false, not "2", not 2.0), within what TensorFlow and JSON readers take.
Integer = Annotated[int, Strict(), Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
PositiveInt = Annotated[Integer, Field(gt=0)]
NonNegativeInt = Annotated[Integer, Field(ge=0)]
Number = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]  # finite, not true/false
UnitInterval = Annotated[Number, Field(ge=0.0, lt=1.0)]
OpenUnitInterval = Annotated[Number, Field(gt=0.0, lt=1.0)]
PositiveFloat = Annotated[Number, Field(gt=0.0)]


# ---------------------------------------------------------------------------------------------- model
def check_url(url: str) -> str:
    """A local path or a URL whose scheme an fsspec implementation serves (``foo://`` would fail on the workers)."""
    if not url.strip():
        raise ValueError("got '', must be a local path or a URL such as gs://bucket/data.npz")
    known = set(fsspec.available_protocols())
    for part in url.split("::"):  # fsspec's chained URLs: simplecache::gs://...
        scheme, found, _ = part.partition("://")
        if found and scheme not in known:
            raise ValueError(
                f"got {url!r}: no filesystem serves {scheme}://; use a local path or a URL with a scheme fsspec "
                "knows, e.g. gs://, s3://, https://, file://, memory://"
            )
    return url


Location = Annotated[str, AfterValidator(check_url)]


class SmallCNNModel(StrictModel):
    """Conv(3x3)+MaxPool blocks, then a dense layer: a fast baseline for small images."""

    recipe: Literal["small_cnn"]
    conv_filters: list[PositiveInt] = Field(default=[32, 64], min_length=1)
    dense_units: PositiveInt = 128
    dropout: UnitInterval = 0.0


class ResNetModel(StrictModel):
    """Pre-activation bottleneck ResNet (the practitioner recipe: stages (9, 9, 9), filters (64, 64, 128, 256))."""

    recipe: Literal["resnet"]
    stages: list[PositiveInt] = Field(default=[9, 9, 9], min_length=1)
    filters: list[PositiveInt] = Field(default=[64, 64, 128, 256], min_length=2)
    l2: Annotated[Number, Field(ge=0.0)] = 1e-4
    bn_epsilon: PositiveFloat = 2e-5
    bn_momentum: OpenUnitInterval = 0.9

    @model_validator(mode="after")
    def _filters_match_stages(self) -> ResNetModel:
        if len(self.filters) != len(self.stages) + 1:
            raise ValueError(
                f"model.filters: got {len(self.filters)} values, must have len(stages) + 1 = "
                f"{len(self.stages) + 1} (the stem's filters, then one per stage)"
            )
        return self


class DenseModel(StrictModel):
    """Flatten, then fully connected layers: for tabular data or tiny images."""

    recipe: Literal["dense"]
    hidden_units: list[PositiveInt] = Field(default=[128], min_length=1)
    dropout: UnitInterval = 0.0


class FunctionModel(StrictModel):
    """A user's own builder, ``path/to/file.py:function``; called as ``function(input_shape, num_classes, **params)``.

    It must return an uncompiled tf_keras model; the orchestrator compiles it with the spec's optimizer,
    loss and metrics inside the distribution strategy's scope.
    """

    function: Annotated[str, Field(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")]
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.function.rsplit(":", 1)[0]

    @property
    def attribute(self) -> str:
        return self.function.rsplit(":", 1)[1]


class CallableModel(StrictModel):
    """A Python function given to the Python API (``orchestrator.run(spec, model_fn=build)``), called on every
    worker as ``build(input_shape, num_classes, **params)`` like a ``function`` file's.

    The function itself is not part of the spec: the job's record names it (``callable``, its qualified name) and
    the runner stores it, pickled with cloudpickle, in the job's folder (``url``, set by the runner, not by hand);
    the workers load it from there. A job on a local (embedded) Ray can use one; a submitted job cannot (its
    driver runs elsewhere): name a file instead (``function: path/to/file.py:build``, shipped with the spec). A
    resumed job needs the function again (``Job.resume(model_fn=build)``): the same model must be rebuilt.
    """

    callable: Annotated[str, Field(min_length=1, max_length=200)]
    params: dict[str, Any] = Field(default_factory=dict)
    url: str | None = None
    _builder: Any = PrivateAttr(default=None)  # the function, in the process that was given it

    @property
    def recipe(self) -> str:
        """How a person recognises the model in ``status`` and ``list`` (views describe a model by its recipe)."""
        return f"{self.callable}() (a Python function)"

    @property
    def builder(self) -> Any:
        """The function this process was given (``None`` in a process that was not: a worker, another shell)."""
        return self._builder

    def with_builder(self, builder: Any) -> CallableModel:
        """A copy that carries ``builder`` (not serialised: it stays in this process)."""
        copy = self.model_copy()
        copy._builder = builder
        return copy


# Keras applications a job may use as a pretrained base, with how each expects its input (the pipeline gives
# float images in [0, 1]): "0-255" (the model rescales itself), "-1..1", or "torch" (ImageNet mean/std).
KERAS_APPLICATIONS: dict[str, str] = {
    **{f"EfficientNetB{i}": "0-255" for i in range(8)},
    **{f"EfficientNetV2B{i}": "0-255" for i in range(4)},
    "EfficientNetV2S": "0-255",
    "MobileNetV3Small": "0-255",
    "MobileNetV3Large": "0-255",
    "ConvNeXtTiny": "0-255",
    "MobileNet": "-1..1",
    "MobileNetV2": "-1..1",
    "ResNet50V2": "-1..1",
    "ResNet101V2": "-1..1",
    "InceptionV3": "-1..1",
    "Xception": "-1..1",
    "NASNetMobile": "-1..1",
    "DenseNet121": "torch",
    "DenseNet169": "torch",
}


class KerasApplicationModel(StrictModel):
    """A ``tf_keras.applications`` base without its top, then a head: global pooling, BatchNormalization,
    Dropout and a Dense softmax (transfer learning). The base always runs with ``training=False``, so its
    BatchNormalization layers stay in inference mode even when fine-tuning unfreezes layers around them.

    ``weights``: ``imagenet`` (Keras downloads them: needs internet on the workers), ``none`` (random), or a
    weights file of the base (``base.save_weights``, ``.h5``) at any fsspec URL or path.
    """

    recipe: Literal["keras_application"]
    application: str = "EfficientNetB0"
    weights: Location = "imagenet"
    alpha: Annotated[Number, Field(gt=0.0, le=1.4)] | None = Field(
        default=None, description="width multiplier (MobileNet, MobileNetV2, MobileNetV3 only)"
    )
    pooling: Literal["avg", "max"] = "avg"
    head_batch_norm: StrictBool = True
    head_dropout: UnitInterval = 0.2

    @field_validator("application")
    @classmethod
    def _known_application(cls, name: str) -> str:
        if name not in KERAS_APPLICATIONS:
            raise ValueError(f"got {name!r}, must be one of {', '.join(sorted(KERAS_APPLICATIONS))}")
        return name

    @model_validator(mode="after")
    def _alpha_only_for_mobilenets(self) -> KerasApplicationModel:
        if self.alpha is not None and not self.application.startswith("MobileNet"):
            raise ValueError(f"alpha: only MobileNet applications take a width multiplier, not {self.application}")
        return self


def _model_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("function", "callable"):
            if key in value:
                return key
        return value.get("recipe")
    if isinstance(value, CallableModel):
        return "callable"
    return "function" if isinstance(value, FunctionModel) else getattr(value, "recipe", None)


ModelSpec = Annotated[
    Annotated[SmallCNNModel, Tag("small_cnn")]
    | Annotated[ResNetModel, Tag("resnet")]
    | Annotated[DenseModel, Tag("dense")]
    | Annotated[KerasApplicationModel, Tag("keras_application")]
    | Annotated[FunctionModel, Tag("function")]
    | Annotated[CallableModel, Tag("callable")],
    Discriminator(_model_tag),
]


# ----------------------------------------------------------------------------------------------- data
class SyntheticData(StrictModel):
    """Generated class-conditional images: learnable, deterministic by the job's seed, no download.

    ``noise`` is the pixel noise's standard deviation (the class pattern has 1); each image is also shifted
    by up to ``max_shift`` pixels, so a model must learn shapes, not memorise positions.
    """

    kind: Literal["synthetic"]
    num_classes: Annotated[Integer, Field(ge=2)] = 10
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (28, 28, 1)
    train_examples: PositiveInt = 4096
    validation_examples: NonNegativeInt = 1024
    test_examples: NonNegativeInt = 0
    noise: Annotated[Number, Field(ge=0.0)] = 1.0
    max_shift: NonNegativeInt = 3


class NpzData(StrictModel):
    """An ``.npz`` file at any fsspec URL with ``x_train``, ``y_train`` and optionally ``x_val``/``y_val``.

    Labels may be integers or one-hot; ``uint8`` images are scaled to [0, 1].
    """

    kind: Literal["npz"]
    url: Location
    validation_split: UnitInterval = 0.0
    resize: tuple[PositiveInt, PositiveInt] | None = None


KERAS_DATASETS: dict[str, int] = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


class KerasData(StrictModel):
    """A ``keras.datasets`` set; downloaded once (needs internet) and cached in the store as ``.npz``."""

    kind: Literal["keras"]
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]
    validation_split: UnitInterval = 0.0
    resize: tuple[PositiveInt, PositiveInt] | None = None


class AugmentationSpec(StrictModel):
    """Random changes to each training image, drawn anew every epoch (Keras' ImageDataGenerator arguments).

    ``rotation``: up to this many degrees either way; ``width_shift``/``height_shift``: up to this fraction of
    the width/height either way; ``shear``: a shear angle of up to this many degrees either way; ``zoom``: each
    axis scaled by a factor in [1 - zoom, 1 + zoom]; ``horizontal_flip``/``vertical_flip``: each image flipped
    with probability 1/2. Pixels moved in from outside take the nearest edge pixel. Every draw is seeded by
    (job seed, epoch, example), so a resumed job trains on exactly the images an uninterrupted one would, and
    validation and test images are never changed.
    """

    rotation: Annotated[Number, Field(ge=0.0, le=180.0)] = 0.0
    width_shift: UnitInterval = 0.0
    height_shift: UnitInterval = 0.0
    shear: Annotated[Number, Field(ge=0.0, lt=90.0)] = 0.0
    zoom: UnitInterval = 0.0
    horizontal_flip: StrictBool = False
    vertical_flip: StrictBool = False


class ImageFolderData(StrictModel):
    """A folder of image files at any fsspec URL: ``train/<class>/*.jpg``, ``val/<class>/...`` and optionally
    ``test/<class>/...``.

    The classes are the sorted folder names in ``train/``; ``val/`` and ``test/`` hold the same classes or
    some of them. Files ending in .jpg, .jpeg, .png, .bmp or .gif (any case) are read, hidden files skipped;
    each image is converted to ``channels`` (1: greyscale, 3: RGB) and resized to ``image_size`` (height,
    width) when loaded. ``augmentation`` changes training images at random, every epoch.
    """

    kind: Literal["image_folder"]
    url: Location
    image_size: tuple[PositiveInt, PositiveInt]
    channels: Annotated[Literal[1, 3], BeforeValidator(_not_a_bool)] = 3
    augmentation: AugmentationSpec | None = None


DataSpec = Annotated[SyntheticData | NpzData | KerasData | ImageFolderData, Field(discriminator="kind")]


# ------------------------------------------------------------------------------------------ optimizer
class _OptimizerBase(StrictModel):
    learning_rate: PositiveFloat
    clipnorm: PositiveFloat | None = None


class SGDOptimizer(_OptimizerBase):
    name: Literal["sgd"]
    learning_rate: PositiveFloat = 0.01
    momentum: UnitInterval = 0.0
    nesterov: StrictBool = False


class AdamOptimizer(_OptimizerBase):
    name: Literal["adam"]
    learning_rate: PositiveFloat = 0.001
    beta_1: OpenUnitInterval = 0.9
    beta_2: OpenUnitInterval = 0.999
    epsilon: PositiveFloat = 1e-7
    amsgrad: StrictBool = False


class AdagradOptimizer(_OptimizerBase):
    name: Literal["adagrad"]
    learning_rate: PositiveFloat = 0.001
    initial_accumulator_value: Annotated[Number, Field(ge=0.0)] = 0.1
    epsilon: PositiveFloat = 1e-7


class RMSpropOptimizer(_OptimizerBase):
    name: Literal["rmsprop"]
    learning_rate: PositiveFloat = 0.001
    rho: OpenUnitInterval = 0.9
    momentum: UnitInterval = 0.0
    epsilon: PositiveFloat = 1e-7
    centered: StrictBool = False


class NadamOptimizer(_OptimizerBase):
    name: Literal["nadam"]
    learning_rate: PositiveFloat = 0.001
    beta_1: OpenUnitInterval = 0.9
    beta_2: OpenUnitInterval = 0.999
    epsilon: PositiveFloat = 1e-7


OptimizerSpec = Annotated[
    SGDOptimizer | AdamOptimizer | AdagradOptimizer | RMSpropOptimizer | NadamOptimizer,
    Field(discriminator="name"),
]

Loss = Literal["categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy"]
Metric = Literal["accuracy", "auc", "precision", "recall"]


# -------------------------------------------------------------------------------------------- scaling
class ScalingSpec(StrictModel):
    """How many Ray Train workers, and what each one reserves."""

    workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeInt = 0
    cpu_replicas_per_worker: PositiveInt = Field(
        default=1,
        description="testing: on a worker without GPUs, split the CPU into this many logical devices and run one "
        "replica on each, as gpus_per_worker does with GPUs (the multi-replica path, exercised without a GPU; "
        "no faster than one replica)",
    )
    placement: Literal["pack", "spread"] = Field(
        default="pack",
        description="pack: fill nodes one by one (fast collectives); spread: one worker per node where possible "
        "(a lost spot node takes fewer workers with it)",
    )
    min_workers: PositiveInt | None = Field(
        default=None,
        description="elastic: after a lost node, continue at once on as many workers as can be placed, never "
        "fewer than this, and return to `workers` when capacity comes back (default: `workers`, not elastic)",
    )

    @property
    def devices_per_worker(self) -> int:
        """Replicas each worker runs: one per GPU, else ``cpu_replicas_per_worker`` (1 unless testing)."""
        return self.gpus_per_worker or self.cpu_replicas_per_worker

    @property
    def replicas(self) -> int:
        """Model replicas in sync: workers x replicas per worker."""
        return self.workers * self.devices_per_worker

    @model_validator(mode="after")
    def _gpus_or_cpu_replicas(self) -> ScalingSpec:
        if self.gpus_per_worker and self.cpu_replicas_per_worker > 1:
            raise ValueError(
                f"scaling.cpu_replicas_per_worker: got {self.cpu_replicas_per_worker} with gpus_per_worker "
                f"{self.gpus_per_worker}; a GPU worker runs one replica per GPU: leave cpu_replicas_per_worker out"
            )
        return self

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.workers

    def sizes(self, batch_size: int) -> list[int]:
        """The worker counts the job may run on, largest first: from ``workers`` down to ``min_workers``, those
        that split ``batch_size`` evenly over their replicas (the global batch never changes)."""
        low = self.workers if self.min_workers is None else self.min_workers
        devices = self.devices_per_worker
        return [n for n in range(self.workers, low - 1, -1) if batch_size % (n * devices) == 0]


# -------------------------------------------------------------------------------------- backups, failures
class BackupSpec(StrictModel):
    """Backups of the complete training state (weights, optimizer slots and step, learning rate, epoch, the LR
    controller's and callbacks' state) in the job's store folder, from which a restarted worker group resumes.

    ``every_epochs``: back up at the end of every N-th epoch (and always after the last); ``every_steps``: also
    every N training steps inside epochs (a kill then loses at most N steps; a resume continues mid-epoch on
    exactly the batches still to come); ``keep``: how many backups to keep (older ones are deleted once a
    newer one is complete); ``snapshot_every_epochs``: also keep a snapshot every N epochs, never deleted,
    from which ``orchestrator resume JOB --from-epoch N`` restarts and ``orchestrator export`` writes a model.
    ``every_seconds``: also back up inside epochs by time: ``auto`` (the default, unless ``every_steps`` is
    given) chooses the interval from the backups' measured cost and the restarts the job has seen (Young's
    interval), so that backups take at most ``max_overhead`` of training time; a number of seconds fixes it;
    null turns it off (epoch backups only).
    """

    every_epochs: PositiveInt = 1
    every_steps: PositiveInt | None = None
    every_seconds: Annotated[float, Field(ge=1.0, allow_inf_nan=False)] | Literal["auto"] | None = "auto"
    max_overhead: Annotated[float, Field(gt=0.0, le=0.5, allow_inf_nan=False)] = 0.01
    keep: PositiveInt = 3
    snapshot_every_epochs: PositiveInt | None = None

    @field_validator("every_seconds", mode="before")
    @classmethod
    def _seconds_or_auto(cls, value: Any) -> Any:
        wrong = isinstance(value, bool) or (isinstance(value, str) and value != "auto")
        if wrong or (isinstance(value, int | float) and not value >= 1):
            raise ValueError(f"got {value!r}, must be a number of seconds (at least 1), auto, or null")
        return value

    def time_interval(self) -> float | Literal["auto"] | None:
        """The time-based interval in force: ``auto``, seconds, or None (an explicit every_steps turns auto off)."""
        if self.every_seconds == "auto" and self.every_steps is not None:
            return None
        return self.every_seconds


# ------------------------------------------------------------------------------------ LR and callbacks
MonitorMode = Literal["auto", "min", "max"]


class LRDrop(StrictModel):
    """A planned LR change before epoch ``at_epoch`` + 1, i.e. once ``at_epoch`` epochs are done: either an
    absolute ``lr`` or a ``factor`` of the LR in force then."""

    at_epoch: PositiveInt
    lr: PositiveFloat | None = None
    factor: Annotated[Number, Field(gt=0.0)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> LRDrop:
        if (self.lr is None) == (self.factor is None):
            raise ValueError(
                f"at_epoch {self.at_epoch}: give exactly one of lr (an absolute learning rate) or factor "
                "(e.g. 0.1 for a 10x drop)"
            )
        return self


class ReduceOnPlateauSpec(StrictModel):
    """Keras' ReduceLROnPlateau, with its state (best, wait, cooldown) kept in every backup."""

    monitor: str = "val_loss"
    factor: OpenUnitInterval = 0.1
    patience: NonNegativeInt = 10
    min_delta: Annotated[Number, Field(ge=0.0)] = 1e-4
    cooldown: NonNegativeInt = 0
    min_lr: Annotated[Number, Field(ge=0.0)] = 0.0
    mode: MonitorMode = "auto"


class LRScheduleSpec(StrictModel):
    """The LR plan: the optimizer's ``learning_rate`` first, then ``drops`` at epochs, and optionally
    ReduceLROnPlateau. A manual ``orchestrator set-lr`` wins over the planned drops from then on;
    ReduceLROnPlateau continues from the LR in force."""

    drops: list[LRDrop] = Field(default_factory=list)
    reduce_on_plateau: ReduceOnPlateauSpec | None = None

    @field_validator("drops")
    @classmethod
    def _increasing(cls, drops: list[LRDrop]) -> list[LRDrop]:
        epochs = [d.at_epoch for d in drops]
        if epochs != sorted(set(epochs)):
            raise ValueError(f"at_epoch values must be strictly increasing, got {epochs}")
        return drops


class EarlyStoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (state kept in backups)."""

    monitor: str = "val_loss"
    patience: NonNegativeInt = 5
    min_delta: Annotated[Number, Field(ge=0.0)] = 0.0
    mode: MonitorMode = "auto"


class BestModelSpec(StrictModel):
    """Keras' ModelCheckpoint(save_best_only): the model of the best epoch by ``monitor``, in ``best/``."""

    monitor: str = "val_loss"
    mode: MonitorMode = "auto"


class TerminateOnNaNSpec(StrictModel):
    """Keras' TerminateOnNaN: stop once the training loss has been NaN or infinite for ``patience_steps`` steps in a
    row (checked where the workers agree anyway, about every ``control.interval_s``, then at every step). The job
    ends FAILED with the reason; no backup is taken of the diverged weights, so ``orchestrator resume JOB --lr X``
    continues from the last backup before the divergence. ``terminate_on_nan: null`` turns it off."""

    patience_steps: PositiveInt = 1


class CallbacksSpec(StrictModel):
    early_stopping: EarlyStoppingSpec | None = None
    best_model: BestModelSpec | None = None
    terminate_on_nan: TerminateOnNaNSpec | None = Field(default_factory=TerminateOnNaNSpec)


class MonitoringSpec(StrictModel):
    """``tensorboard``: event files in the store's ``jobs/<job>/tensorboard/``; ``plot``: the run's figure in
    ``jobs/<job>/plots/run.png``; both written by rank 0 after every epoch, in the background."""

    tensorboard: StrictBool = True
    tensorboard_every_steps: PositiveInt | None = Field(
        default=None, description="also write the batch's loss, metrics and LR every N steps (step = global step)"
    )
    plot: StrictBool = True


class ControlSpec(StrictModel):
    """How often the workers agree on commands (``set-lr --now``, ``stop``) and preemption notices within an
    epoch: about every ``interval_s`` seconds of training (each agreement costs a few milliseconds)."""

    interval_s: PositiveFloat = 1.0


class FailureSpec(StrictModel):
    """How often Ray Train may restart the worker group before the job is FAILED.

    ``max_failures``: restarts after errors (a killed worker, a lost node without notice, a crash);
    ``max_preemptions``: restarts after preemptions that Ray saw coming (-1: unlimited);
    ``sigterm_grace_s``: how long a worker that receives SIGTERM has before it is killed (Kubernetes'
    ``terminationGracePeriodSeconds``, 30 there by default; a spot VM's shutdown notice). Set, the workers back
    up at once, keep training through that period and back up again just before it ends, then restart from that
    backup; unset, they restart right after the first backup. A node drain brings its own deadline.
    """

    max_failures: NonNegativeInt = 3
    max_preemptions: Annotated[Integer, Field(ge=-1)] = -1
    sigterm_grace_s: PositiveFloat | None = None


NotifyEvent = Literal["succeeded", "stopped", "failed", "preempted", "restarted"]
DEFAULT_NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("succeeded", "stopped", "failed", "preempted")
ENV_URL = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")


class NotifySpec(StrictModel):
    """Where to say that the job ended, failed (its failure budget spent included) or was preempted.

    ``urls``: one apprise URL per destination (``slack://...``, ``mailto://...``, ``ntfy://...``,
    ``json://host/path``; the ``notify`` extra installs apprise), or ``env:NAME`` for a URL in the driver's
    environment variable NAME (keeps a token out of the store). Empty: the config file's ``notify`` list, if any.
    ``on``: the events: ``succeeded``, ``stopped``, ``failed``, ``preempted`` (a worker group lost to a
    preemption or a notice), ``restarted`` (a worker group lost to any other failure). A notification that
    cannot be sent is logged in driver.log and never fails the job.
    """

    urls: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    on: list[NotifyEvent] = Field(default_factory=lambda: list(DEFAULT_NOTIFY_EVENTS))

    @field_validator("urls")
    @classmethod
    def _urls_have_a_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not (ENV_URL.match(url) or re.match(r"^[a-z][a-z0-9+.-]*://", url)):
                raise ValueError(f"{url!r} is neither an apprise URL (scheme://...) nor env:VARIABLE_NAME")
        return urls


# ------------------------------------------------------------------------------------------------ cost
Price = Annotated[Number, Field(ge=0.0)]


class CostSpec(StrictModel):
    """What the job's capacity costs, for ``status`` and ``compare`` (docs/watching.md, "Cost"); each field left
    out is taken from the config file's ``[cost]`` table, if it has it. The unit is one GPU for a job with
    ``scaling.gpus_per_worker``, else one worker."""

    spot_per_hour: Price | None = Field(
        default=None, description="the price of one GPU-hour (a CPU-only job: one worker-hour) as the job runs: spot"
    )
    on_demand_per_hour: Price | None = Field(
        default=None, description="the same on demand: what the job is compared with"
    )
    currency: Annotated[str, Field(min_length=1, max_length=8)] | None = Field(
        default=None, description='the label before each amount (default "$"); no conversion'
    )


class MlflowSpec(StrictModel):
    """Log the job to MLflow (the ``mlflow`` extra): its parameters, each epoch's metrics once (step = the
    0-based epoch) and its final and best models, in one run that every attempt and every resume continues.

    ``tracking_uri``: an MLflow tracking URI (``sqlite:///path/mlflow.db``, a folder, ``http://host:5000``), or
    ``env:NAME`` for one in the driver's environment variable NAME. Unset: the driver's ``$MLFLOW_TRACKING_URI``,
    else the config file's ``mlflow_tracking_uri``, else ``sqlite:///~/.orchestrator/mlflow.db``.
    ``experiment``: the MLflow experiment (created if missing); unset: ``orchestrator``. A failure to log is
    written in driver.log and never fails the job; ``orchestrator mlflow-sync JOB`` catches up later.
    """

    tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "orchestrator"

    @field_validator("tracking_uri")
    @classmethod
    def _uri_or_env(cls, uri: str | None) -> str | None:
        if uri is not None and uri.startswith("env:") and not ENV_URL.match(uri):
            raise ValueError(f"{uri!r}: env: must be followed by an environment variable name (env:MLFLOW_URI)")
        return uri


class TrackingSpec(StrictModel):
    """Experiment trackers the job's driver logs to (docs/tracking.md); none by default."""

    mlflow: MlflowSpec | None = None


# ------------------------------------------------------------------------------------------------ job
class PhaseSpec(StrictModel):
    """One phase of a transfer-learning job: which part of the base trains, with which optimizer.

    The first phase usually freezes the base (feature extraction); a later one unfreezes the top ``unfreeze_top``
    layers of the base (BatchNormalization layers excepted: they stay frozen and in inference mode) at a lower
    learning rate (fine-tuning). A phase starts at an epoch boundary with a recompile and a fresh optimizer (the
    slots of the previous phase's optimizer belong to other trainable variables, as in Keras' own guide); a
    restart inside a phase restores that phase's optimizer state from the backup.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=40)]
    epochs: PositiveInt
    unfreeze_top: int | Literal["all"] = 0
    optimizer: OptimizerSpec | None = Field(default=None, description="default: the job's optimizer")

    @field_validator("unfreeze_top", mode="plain")
    @classmethod
    def _layers_or_all(cls, value: Any) -> int | Literal["all"]:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX):
            return value  # type: ignore[no-any-return]
        raise ValueError("must be a number of layers (0 or more) or 'all'")


class JobSpec(StrictModel):
    """A training job: model, data, optimizer and how to run it.

    Example::

        name: quickstart
        model: {recipe: small_cnn}
        data: {kind: synthetic}
        optimizer: {name: adam, learning_rate: 0.001}
        loss: sparse_categorical_crossentropy
        epochs: 5
        batch_size: 64
        scaling: {workers: 2}
    """

    name: Annotated[str, Field(pattern=JOB_NAME_PATTERN, max_length=63)]
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec
    loss: Loss = "sparse_categorical_crossentropy"
    metrics: list[Metric] = ["accuracy"]
    epochs: PositiveInt
    batch_size: PositiveInt
    steps_per_execution: PositiveInt = 1
    seed: Annotated[Integer, Field(ge=0, lt=2**32)] = 0
    deterministic: StrictBool = False
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        default="float32",
        description="the Keras mixed-precision policy: mixed_float16 (GPUs with float16 tensor cores; the "
        "optimizer is wrapped in a LossScaleOptimizer) or mixed_bfloat16 (recent GPUs, TPUs, some CPUs) compute "
        "in 16 bits with float32 variables; the model's output stays float32",
    )
    jit_compile: StrictBool = Field(default=False, description="compile the train step with XLA")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    backup: BackupSpec = Field(default_factory=BackupSpec)
    failures: FailureSpec = Field(default_factory=FailureSpec)
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    callbacks: CallbacksSpec = Field(default_factory=CallbacksSpec)
    control: ControlSpec = Field(default_factory=ControlSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)
    cost: CostSpec = Field(default_factory=CostSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    phases: list[PhaseSpec] = Field(default_factory=list)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_aliases(cls, metrics: Any) -> Any:
        """Keras' own short name: ``acc`` is ``accuracy``."""
        return ["accuracy" if m == "acc" else m for m in metrics] if isinstance(metrics, list) else metrics

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, metrics: list[str]) -> list[str]:
        duplicates = sorted({m for m in metrics if metrics.count(m) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return metrics

    @model_validator(mode="after")
    def _cross_field_rules(self) -> JobSpec:
        replicas = self.scaling.replicas
        if self.batch_size % replicas:
            raise ValueError(
                f"batch_size: got {self.batch_size}, must be divisible by the number of replicas ({replicas} = "
                f"{self.scaling.workers} workers x {self.scaling.devices_per_worker} device(s) each); "
                f"batch_size is global and split evenly across replicas"
            )
        low = self.scaling.min_workers
        if low is not None and low > self.scaling.workers:
            most = self.scaling.workers
            raise ValueError(
                f"scaling.min_workers: got {low}, more than scaling.workers ({most}); give a number from 1 to {most}, "
                f"or leave it out for a job that always runs on {most}"
            )
        if low is not None and self.batch_size % (low * self.scaling.devices_per_worker):
            raise ValueError(
                f"scaling.min_workers: got {low}, but batch_size {self.batch_size} does not split evenly over "
                f"{low * self.scaling.devices_per_worker} replicas; the global batch stays the same at every "
                f"size, so choose a min_workers whose replicas divide it ({', '.join(map(str, _divisors(self)))})"
            )
        classes = known_num_classes(self.data)
        if self.loss == "binary_crossentropy" and classes is not None and classes != 2:
            given = "data.num_classes" if isinstance(self.data, SyntheticData) else "data.name"
            raise ValueError(
                f"loss: got binary_crossentropy, but data has {classes} classes ({given}), it needs 2; use "
                "sparse_categorical_crossentropy (integer labels) or categorical_crossentropy (one-hot)"
            )
        thresholded = sorted(set(self.metrics) & {"auc", "precision", "recall"})
        if thresholded and self.loss == "sparse_categorical_crossentropy":
            raise ValueError(
                f"metrics: got {', '.join(thresholded)} with loss sparse_categorical_crossentropy; these metrics "
                "compare one-hot labels with the predictions: use loss categorical_crossentropy (or "
                "binary_crossentropy for two classes)"
            )
        self._check_sizes()
        self._check_monitors()
        self._check_phases()
        late = [d.at_epoch for d in self.lr_schedule.drops if d.at_epoch >= self.epochs]
        if late:
            raise ValueError(
                f"lr_schedule.drops: at_epoch {late[0]} is never reached: the job trains {self.epochs} epochs, "
                f"so a drop must be at 1..{self.epochs - 1} epochs done"
            )
        return self

    def _check_sizes(self) -> None:
        """Sizes known from the spec alone: at least one global batch of training and of validation data."""
        sizes = known_split_sizes(self.data)
        if sizes is None:
            return
        train, validation = sizes
        if train < self.batch_size:
            raise ValueError(
                f"batch_size: got {self.batch_size}, more than the {train} training examples; lower it or use more data"
            )
        if 0 < validation < self.batch_size:
            where = "data.validation_examples" if isinstance(self.data, SyntheticData) else "data.validation_split"
            raise ValueError(
                f"{where}: gives {validation} validation examples, fewer than one global batch ({self.batch_size}); "
                "validation would be skipped: use 0 for none, or at least one batch"
            )

    def _check_phases(self) -> None:
        if not self.phases:
            return
        total = sum(phase.epochs for phase in self.phases)
        if total != self.epochs:
            raise ValueError(
                f"phases: their epochs add up to {total} ({' + '.join(str(p.epochs) for p in self.phases)}), but "
                f"epochs is {self.epochs}; make them equal"
            )
        names = [phase.name for phase in self.phases]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"phases: name {repeated[0]!r} is used twice; each phase needs its own name")
        if not isinstance(self.model, KerasApplicationModel) and any(p.unfreeze_top for p in self.phases):
            raise ValueError(
                "phases: unfreeze_top needs a model with a base to unfreeze: model.recipe keras_application"
            )

    def local_files(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file on this machine the spec names (not URLs): a cluster must get them."""
        named: list[tuple[str, str]] = []
        if isinstance(self.model, FunctionModel):
            named.append(("model.function", self.model.file))
        weights = self.model.weights if isinstance(self.model, KerasApplicationModel) else "none"
        if weights not in ("imagenet", "none") and "://" not in weights:
            named.append(("model.weights", weights))
        if isinstance(self.data, NpzData | ImageFolderData) and "://" not in self.data.url:
            named.append(("data.url", self.data.url))
        return named

    def phase_starts(self) -> list[int]:
        """The epoch (0-based) at which each phase starts; ``[0]`` for a job without phases."""
        starts, epoch = [], 0
        for phase in self.phases or [PhaseSpec(name="training", epochs=self.epochs)]:
            starts.append(epoch)
            epoch += phase.epochs
        return starts

    def phase_at(self, epoch: int) -> int:
        """Index of the phase that trains ``epoch`` (0-based)."""
        return max(index for index, start in enumerate(self.phase_starts()) if start <= epoch)

    def phase_optimizer(self, phase: int) -> OptimizerSpec:
        chosen = self.phases[phase].optimizer if self.phases else None
        return chosen or self.optimizer

    def logged_metrics(self) -> list[str]:
        """What every epoch logs: ``loss`` and the metrics, each also as ``val_*`` when there is validation data."""
        train = ["loss", *self.metrics]
        sizes = known_split_sizes(self.data)
        has_validation = sizes is None or sizes[1] > 0 or not isinstance(self.data, SyntheticData)
        return train + [f"val_{name}" for name in train] if has_validation else train

    def _check_monitors(self) -> None:
        watched = {
            "lr_schedule.reduce_on_plateau.monitor": self.lr_schedule.reduce_on_plateau,
            "callbacks.early_stopping.monitor": self.callbacks.early_stopping,
            "callbacks.best_model.monitor": self.callbacks.best_model,
        }
        logged = self.logged_metrics()
        for where, part in watched.items():
            if part is not None and part.monitor not in logged:
                raise ValueError(f"{where}: got {part.monitor!r}, must be one of {', '.join(logged)}")


def known_num_classes(data: SyntheticData | NpzData | KerasData | ImageFolderData) -> int | None:
    """Number of classes when the spec alone tells it (``None`` for files, known only once loaded)."""
    if isinstance(data, SyntheticData):
        return data.num_classes
    if isinstance(data, KerasData):
        return KERAS_DATASETS[data.name]
    return None


KERAS_TRAIN_EXAMPLES: dict[str, int] = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}


def known_split_sizes(data: SyntheticData | NpzData | KerasData | ImageFolderData) -> tuple[int, int] | None:
    """(training, validation) examples when the spec alone tells them (``None`` for files)."""
    if isinstance(data, SyntheticData):
        return data.train_examples, data.validation_examples
    if isinstance(data, KerasData):
        total = KERAS_TRAIN_EXAMPLES[data.name]
        if data.validation_split == 0:
            return total, 10000  # every keras set here has a 10,000-image test split, used for validation
        validation = round(total * data.validation_split)
        return total - validation, validation
    return None


def resolve_relative_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Return a copy of a raw spec with the paths it holds made absolute against ``base`` (the spec's folder)."""
    resolved = dict(raw)
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("function"), str) and ":" in model["function"]:
        file, _, attribute = model["function"].rpartition(":")
        if file.strip() and not Path(file).is_absolute():  # an empty one is reported as such, not as the folder
            resolved["model"] = {**model, "function": f"{(base / file).resolve()}:{attribute}"}
    weights = model.get("weights") if isinstance(model, dict) else None
    local_weights = isinstance(weights, str) and weights not in ("imagenet", "none") and "://" not in weights
    if local_weights and str(weights).strip() and not Path(str(weights)).is_absolute():
        resolved["model"] = {**resolved["model"], "weights": str((base / str(weights)).resolve())}
    data = raw.get("data")
    if isinstance(data, dict) and data.get("kind") in ("npz", "image_folder") and isinstance(data.get("url"), str):
        url = data["url"]
        if url.strip() and "://" not in url and not Path(url).is_absolute():
            resolved["data"] = {**data, "url": str((base / url).resolve())}
    return resolved


def _divisors(spec: JobSpec) -> list[int]:
    """Worker counts up to ``scaling.workers`` whose replicas split ``batch_size`` evenly."""
    devices = spec.scaling.devices_per_worker
    return [n for n in range(1, spec.scaling.workers + 1) if spec.batch_size % (n * devices) == 0]
