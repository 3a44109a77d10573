"""One worker's training session: strategy, data, model, fit, and what it leaves in the store."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import tensorflow as tf
import tf_keras as keras

from orchestrator.errors import DataError
from orchestrator.recipes import datasets
from orchestrator.recipes.models import build_model
from orchestrator.records import BackupManifest, ControlState, Ending
from orchestrator.spec import JobSpec, KerasData, NpzData
from orchestrator.store import JobStore
from orchestrator.worker import backup_cache, data_cache, devices, opening
from orchestrator.worker import scratch as scratch_dirs
from orchestrator.worker.agreement import gathered, use_coordination_service
from orchestrator.worker.async_writes import wait_for_writes
from orchestrator.worker.augmentation import make_augmenter
from orchestrator.worker.backup import BackupPrefetch, BackupUploader, restore_backup
from orchestrator.worker.compiling import compile_phase, input_shape, switch_phase
from orchestrator.worker.config import WorkerConfig
from orchestrator.worker.control import AgreementCount, Halt, TrainingControl
from orchestrator.worker.control_inputs import CommandPoller
from orchestrator.worker.evaluation import evaluate_test, summary
from orchestrator.worker.notice import NoticeClock
from orchestrator.worker.pipeline import (
    EpochPlan,
    IteratorReaper,
    Tensors,
    distributed_dataset,
    fit_segments,
    make_encoder,
    steps_per_epoch,
)
from orchestrator.worker.plots import PlotWriter
from orchestrator.worker.progress import ProgressCallback
from orchestrator.worker.saved_models import save_final
from orchestrator.worker.sigterm import SigtermNotice
from orchestrator.worker.startup import StartupClock, wait_for_chief
from orchestrator.worker.store_writer import StoreWriter
from orchestrator.worker.tensorboard import TensorBoardWriter
from orchestrator.worker.tracing import FirstStepReport
from orchestrator.worker.validation import StreamValidation
from orchestrator.worker.warm_pool import RefillAfterFirstStep, WarmPool, this_worker_start
from orchestrator.worker.worker_log import worker_logger


class TrainingSession:
    """Trains the job's model on this worker, in sync with the others through the strategy."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.store = JobStore(config.store_url)
        self.spec: JobSpec = self.store.load_job(config.job).spec
        self.writer = StoreWriter(self.store, config.job, log_name=f"worker-{self.rank}.log")
        self.log = worker_logger(self.writer, self.rank)
        self.poller: CommandPoller | None = None
        self.tensorboard: TensorBoardWriter | None = None
        self.plots: PlotWriter | None = None
        self.agreements: AgreementCount | None = None
        self.pool: WarmPool | None = None
        self.first_step: FirstStepReport | None = None
        self.reaper = IteratorReaper()
        self._tensors = Tensors()  # the data as tensors, shared by every fit() of the attempt
        self._labels: Any = None  # one encoded batch's labels, for build_compiled_containers
        self._scratch = tempfile.TemporaryDirectory(  # the fetched backup, until it is restored
            prefix=scratch_dirs.prefix(f"fetched-rank{self.rank}"), ignore_cleanup_errors=True
        )

    def run(self) -> None:
        try:
            self._train()
        except Exception:
            self.log.exception("training failed on rank %d", self.rank)
            self._log_agreements()
            try:
                self.writer.close()
            except Exception as close_error:  # the training error is the one to report, not this one
                self.log.error("could not store the last records: %s", close_error)
            raise
        finally:
            with contextlib.suppress(Exception):  # the attempt's outcome stands, whatever this does
                wait_for_writes()  # this worker's last backup on its disk (written asynchronously)
            if self.poller is not None:
                self.poller.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.plots is not None:
                self.plots.close()
            if self.pool is not None:
                self.pool.close()
            self._scratch.cleanup()
        self._log_agreements()
        self.writer.close()

    def _log_agreements(self) -> None:
        if self.agreements is not None:
            self.log.info("rank %d: %s", self.rank, self.agreements.describe())

    def _train(self) -> None:
        """The attempt, phase by phase: start up (strategy, data, model, restore), open the attempt (its record,
        the writers), train its ``fit()`` segments, finish (final model, test split, ending)."""
        built = self._start_up()
        attempt, uploader = self._open_attempt(built)
        state, ending = self._train_segments(built, attempt, uploader)
        if uploader is not None:
            uploader.wait()  # the last backup is stored before the job may be called finished
        self._finish(built, state, ending, attempt)

    def _start_up(self) -> _Built:
        """Strategy, data, model and the restored backup, each phase timed (``attempts.jsonl``'s ``startup``)."""
        spec = self.spec
        clock = StartupClock()
        # The backup to restore is fetched and verified meanwhile (store and disk only, no TensorFlow); rank 0's
        # verified copy of the one it chooses stays in the scratch folder for its restore (no second download).
        fetched = self._scratch.name
        prefetch = BackupPrefetch(self.store, self.config.job, rank=self.rank, log=self.log, keep_in=fetched)
        strategy = self._strategy()  # first: collective ops must be configured before any other TF op
        clock.mark("strategy")
        # SIGTERM notices through TensorFlow's coordination service (MultiWorkerMirroredStrategy only)
        preemption = SigtermNotice(self.log) if self.world_size > 1 else None
        keras.utils.set_random_seed(spec.seed)
        if spec.deterministic:
            tf.config.experimental.enable_op_determinism()
        data, steps = self._load_data()
        self._tensors.start(data.x_train, data.y_train)  # copied while the model is built (pipeline.Tensors)
        clock.mark("data")
        encode = make_encoder(
            images_dtype=data.x_train.dtype,
            num_classes=data.num_classes,
            loss=spec.loss,
            resize=spec.data.resize if isinstance(spec.data, NpzData | KerasData) else None,
        )
        # One encoded batch's labels: the compiled metrics are built for them right after each compile().
        self._labels = encode(tf.constant(data.x_train[:2]), tf.constant(data.y_train[:2]))[1]
        devices.apply_precision(spec.precision, self.log)  # before the model's layers are built
        with strategy.scope():
            model = build_model(
                spec.model,
                input_shape(data, spec),
                data.num_classes,
                binary=spec.loss == "binary_crossentropy",
            )
            model = devices.float32_outputs(model, self.log)
            clock.mark("model")
            chosen = prefetch.agreed()
            clock.mark("choice")
            # Compiled as the backup's writer was (its phase's trainable layers and optimizer), so that the
            # optimizer's slots match the backup's; a later phase is switched to at its first epoch.
            phase = chosen.control.phase if chosen is not None and chosen.control is not None else 0
            compile_phase(model, spec, phase, self._labels, self.log)
            clock.mark("compile")
            prefetch.wait()
            restored = (
                restore_backup(
                    model, self.store, self.config.job, chosen.name, rank=self.rank, log=self.log, fetched=fetched
                )
                if chosen is not None
                else None
            )
        self._scratch.cleanup()
        devices.log_loss_scale(model.optimizer, restored=restored is not None, log=self.log)
        clock.mark("restore")
        return _Built(strategy, preemption, data, steps, encode, model, restored, clock.seconds, time.time())

    def _load_data(self) -> tuple[datasets.Dataset, int]:
        """The job's arrays (through the node's cache) and the steps of an epoch; a one-line error where the
        loss or the batch cannot fit them."""
        spec = self.spec
        data = data_cache.load(
            spec.data, seed=spec.seed, keras_cache_url=self.config.keras_cache_url, loss=spec.loss, log=self.log
        )
        if spec.loss == "binary_crossentropy" and data.num_classes != 2:
            raise DataError(
                f"loss: got binary_crossentropy, but the data has {data.num_classes} classes",
                hint="use sparse_categorical_crossentropy (integer labels) or categorical_crossentropy (one-hot)",
            )
        steps = steps_per_epoch(len(data.x_train), spec.batch_size)
        if steps < 1:
            raise DataError(
                f"batch_size: got {spec.batch_size}, larger than the {len(data.x_train)} training examples",
                hint="lower batch_size or use more training data",
            )
        return data, steps

    def _open_attempt(self, built: _Built) -> tuple[int, BackupUploader | None]:
        """Record the attempt (rank 0; every rank learns its number) and open what it writes; returns the attempt
        and rank 0's backup uploader."""
        spec, restored = self.spec, built.restored
        start_epoch, start_step = (restored.epoch, restored.step) if restored else (0, 0)
        workers = gathered(this_worker_start(self.rank))  # rank 0: how every rank's process started
        attempt = opening.start_attempt(
            self.store,
            self.config.job,
            self.rank,
            self.log,
            start_epoch=start_epoch,
            start_step=start_step,
            restored_from=restored.name if restored else None,
            startup=built.startup,
            workers=workers or [],
            replicas=built.strategy.num_replicas_in_sync,
        )
        self._start_warm_pool(attempt)
        opening.publish_runtime_env(spec, self.rank, self.config.run, self.log)
        if ray.train.get_context().get_local_rank() == 0:  # once per node, off the training thread
            threading.Thread(target=scratch_dirs.sweep, args=(self.log,), name="scratch-sweep", daemon=True).start()
        uploader = None
        if self.rank == 0:
            self.first_step = FirstStepReport(self.log, attempt, built.restored_at)
            uploader = BackupUploader(self.store, self.config.job, self.log, self.writer.flush)
            if spec.monitoring.tensorboard:
                self.tensorboard = TensorBoardWriter(self.store, self.config.job, attempt, self.log)
            if spec.monitoring.plot:
                self.plots = PlotWriter(self.store, self.config.job, self.writer, self.log)
            self.poller = CommandPoller(self.store, self.config.job, self.log)
        validation = built.validation_steps(spec.batch_size)
        opening.log_start(self.log, self.rank, self.world_size, built.strategy, built.model, built.data, built.steps,
                          spec.batch_size, validation)  # fmt: skip
        return attempt, uploader

    def _train_segments(
        self, built: _Built, attempt: int, uploader: BackupUploader | None
    ) -> tuple[ControlState, Ending | None]:
        """One ``fit()`` per segment from the restored step to the last epoch (a resumed partial epoch is its own;
        a phase starts its own): the control state at the end, and the ending if training ended early."""
        spec, restored = self.spec, built.restored
        start_epoch, start_step = (restored.epoch, restored.step) if restored else (0, 0)
        state = opening.control_state(spec, self.store, self.config.job, self.rank, restored, self.log)
        self.agreements = AgreementCount()
        notices = NoticeClock(spec.failures.sigterm_grace_s)  # shared by the attempt's fits, like the count
        # rank 0's, shared by the attempt's fits
        interval = opening.backup_interval(spec, self.store, self.config.job, self.rank, self.log)
        for plan in fit_segments(start_epoch, start_step, spec.epochs, spec.phase_starts()):
            if spec.phase_at(plan.start_epoch) != state.phase:
                phase = spec.phase_at(plan.start_epoch)
                state = switch_phase(
                    built.model, built.strategy, spec, phase, state, plan.start_epoch, self._labels, self.log
                )
            control = TrainingControl(
                spec=spec,
                store=self.store,
                job=self.config.job,
                rank=self.rank,
                attempt=attempt,
                state=state,
                steps_per_epoch=built.steps,
                start_epoch=plan.start_epoch,
                first_step=plan.start_step,
                poller=self.poller,
                log=self.log,
                preemption=built.preemption,
                uploader=uploader,
                end_epoch=plan.end_epoch,
                count=self.agreements,
                notices=notices,
                interval=interval,
                run=self.config.run,
            )
            try:
                self._fit(built, plan, attempt, control)
            except Halt as halt:
                return state, halt.ending
            state = control.state
            if control.finished is not None:
                return state, control.finished
        return state, None

    def _finish(self, built: _Built, state: ControlState, ending: Ending | None, attempt: int) -> None:
        """After the last segment: a stop or a divergence records its ending and no more; otherwise the final
        model, the test split's evaluation and the ending."""
        spec = self.spec
        if ending is not None and ending.kind in ("stopped", "diverged"):  # no evaluation, no final model
            self.writer.flush()
            if self.rank == 0:
                self.store.write_ending(self.config.job, ending)
            self.log.info("rank %d stopped: %s", self.rank, ending.reason)
            return
        epochs_done = ending.epoch if ending is not None else spec.epochs
        model = built.model
        self.store.write_worker_summary(self.config.job, summary(model, self.rank, self.world_size, epochs_done))
        # the final model, before the test split may be evaluated on the best one
        save_final(model, self.store, self.config.job, self.rank)
        evaluate_test(
            model,
            built.strategy,
            built.data,
            built.encode,
            epochs_done,
            state.best_model,
            spec=spec,
            store=self.store,
            job=self.config.job,
            rank=self.rank,
            reaper=self.reaper,
            log=self.log,
        )
        backup_cache.forget(self.store.url, self.config.job, self.rank)  # trained: no restore will need it here
        self.writer.flush()
        if self.rank == 0:
            self.store.write_ending(
                self.config.job,
                ending
                or Ending(
                    kind="completed",
                    epoch=spec.epochs,
                    reason=f"trained all {spec.epochs} epochs",
                    attempt=attempt,
                ),
            )
        self.log.info("rank %d finished after %d epochs", self.rank, epochs_done)

    def _strategy(self) -> tf.distribute.Strategy:
        threads = max(1, int(self.spec.scaling.cpus_per_worker))
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        cpu_replicas = self.spec.scaling.cpu_replicas_per_worker
        devices.split_cpu(cpu_replicas, self.log)  # before the strategy initialises TensorFlow's devices
        if self.world_size > 1 and self.rank > 0:
            wait_for_chief(self.log)
        strategy = devices.make_strategy(self.world_size, cpu_replicas)
        use_coordination_service(self.rank, self.world_size, self.log)  # agreements in ms, not via Ray Train's actor
        return strategy

    def _fit(self, built: _Built, plan: EpochPlan, attempt: int, control: TrainingControl) -> None:
        """One ``fit()`` over ``plan``: the data stream, validation stream and callbacks all start where it starts."""
        spec = self.spec
        train = distributed_dataset(
            built.strategy,
            built.data.x_train,
            built.data.y_train,
            global_batch=spec.batch_size,
            seed=spec.seed,
            plan=plan,
            shuffle=True,
            encode=built.encode,
            augment=make_augmenter(spec.data, spec.seed),
            tensors=self._tensors,
        )
        try:
            built.model.fit(
                self.reaper.watch(train),
                initial_epoch=plan.start_epoch,
                epochs=plan.end_epoch,
                steps_per_epoch=built.steps - plan.start_step,  # a partial epoch's fit: only the steps to come
                callbacks=self._callbacks(built, plan, attempt, control),
                verbose=0,
            )
        finally:
            self.reaper.reap()  # the iterators' teardown waits on tf.data's threads: not on this thread

    def _callbacks(self, built: _Built, plan: EpochPlan, attempt: int, control: TrainingControl) -> list[Any]:
        """The fit's callbacks, in order: first-step report, validation stream, progress (rank 0), control,
        the warm pool's refill."""
        spec, validation_steps = self.spec, built.validation_steps(self.spec.batch_size)
        callbacks: list[Any] = []
        if self.first_step is not None and not self.first_step.reported:
            callbacks.append(self.first_step)
        if validation_steps:
            stream = distributed_dataset(
                built.strategy,
                built.data.x_val,
                built.data.y_val,
                global_batch=spec.batch_size,
                seed=spec.seed,
                plan=EpochPlan(plan.start_epoch, plan.end_epoch),
                shuffle=False,
                encode=built.encode,
                tensors=self._tensors,
            )
            callbacks.append(StreamValidation(self.reaper.watch(stream), validation_steps))
        if self.rank == 0:
            progress = ProgressCallback(
                self.writer,
                attempt=attempt,
                epochs=spec.epochs,
                steps_per_epoch=built.steps,
                global_batch=spec.batch_size,
                first_step=plan.start_step,
                control=control,
                tensorboard=self.tensorboard,
                tensorboard_every=spec.monitoring.tensorboard_every_steps,
                plots=self.plots,
            )
            callbacks.append(progress)
        callbacks.append(control)  # after progress: an epoch's history line records the LR it trained with
        if self.pool is not None:
            callbacks.append(RefillAfterFirstStep(self.pool))
        return callbacks

    def _start_warm_pool(self, attempt: int) -> None:
        """The node's first worker keeps a warm process per worker of the job on this node for the next restart
        (``warm_pool``), from the attempt's first step; rank 0 first logs how this attempt's workers started."""
        context = ray.train.get_context()
        if context.get_local_rank() != 0:
            return
        report = (
            (lambda: opening.report_warm_start(self.store, self.config.job, attempt, self.log))
            if self.rank == 0
            else None
        )
        self.pool = WarmPool(context.get_local_world_size(), self.log, first=report)


@dataclass(frozen=True)
class _Built:
    """What an attempt's start-up made: the strategy, the data, the model (restored where a backup was)."""

    strategy: tf.distribute.Strategy
    preemption: SigtermNotice | None
    data: datasets.Dataset
    steps: int  # per epoch
    encode: Any
    model: Any
    restored: BackupManifest | None
    startup: dict[str, float]  # seconds per start-up phase
    restored_at: float  # UNIX time the start-up ended

    def validation_steps(self, global_batch: int) -> int:
        return steps_per_epoch(len(self.data.x_val), global_batch)
