"""One worker's training session: strategy, data, model, fit, and what it leaves in the store."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import ray.train
import tensorflow as tf
import tf_keras as keras

from orchestrator import lr_plan, resize_signal
from orchestrator.backup_interval import BackupInterval
from orchestrator.errors import DataError, OrchestratorError
from orchestrator.recipes import datasets
from orchestrator.recipes.models import build_model, configure_phase
from orchestrator.records import (
    AttemptRecord,
    BackupManifest,
    ControlState,
    Ending,
    Evaluation,
    MonitorState,
    PlateauState,
    WorkerStart,
    WorkerSummary,
)
from orchestrator.recovery import time_to_resume
from orchestrator.spec import JobSpec, KerasData, NpzData, OptimizerSpec
from orchestrator.store import JobStore
from orchestrator.worker import backup_cache, data_cache, devices
from orchestrator.worker import scratch as scratch_dirs
from orchestrator.worker.augmentation import make_augmenter
from orchestrator.worker.backup import BackupPrefetch, BackupUploader, agreed, restore_backup
from orchestrator.worker.config import WorkerConfig
from orchestrator.worker.control import AgreementCount, CommandPoller, Halt, TrainingControl
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
from orchestrator.worker.sigterm import SigtermNotice
from orchestrator.worker.startup import StartupClock, wait_for_chief
from orchestrator.worker.store_writer import StoreWriter
from orchestrator.worker.tensorboard import TensorBoardWriter
from orchestrator.worker.tracing import FirstStepReport, build_compiled_containers
from orchestrator.worker.validation import StreamValidation
from orchestrator.worker.warm_pool import (
    RefillAfterFirstStep,
    WarmPool,
    describe_warm_start,
    gathered,
    this_worker_start,
)

LOGGER_NAME = "orchestrator.worker"


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
        self.log = _worker_logger(self.writer, self.rank)
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
        preemption = self._preemption_watcher()
        keras.utils.set_random_seed(spec.seed)
        if spec.deterministic:
            tf.config.experimental.enable_op_determinism()
        data, steps = self._load_data()
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
                _input_shape(data, spec),
                data.num_classes,
                binary=spec.loss == "binary_crossentropy",
            )
            model = devices.float32_outputs(model, self.log)
            chosen = prefetch.agreed()
            # Compiled as the backup's writer was (its phase's trainable layers and optimizer), so that the
            # optimizer's slots match the backup's; a later phase is switched to at its first epoch.
            phase = chosen.control.phase if chosen is not None and chosen.control is not None else 0
            self._compile(model, phase)
            clock.mark("model")
            prefetch.wait()
            restored = (
                restore_backup(
                    model, self.store, self.config.job, chosen.name, rank=self.rank, log=self.log, fetched=fetched
                )
                if chosen is not None
                else None
            )
        self._scratch.cleanup()
        scale = devices.loss_scale(model.optimizer)
        if scale is not None:
            self.log.info(
                "dynamic loss scale %g, %d good steps since it last changed (%s)",
                *scale,
                "restored from the backup" if restored else "initial",
            )
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
        attempt = self._start_attempt(
            start_epoch,
            start_step,
            restored.name if restored else None,
            built.startup,
            workers or [],
            built.strategy.num_replicas_in_sync,
        )
        self._start_warm_pool(attempt)
        self._publish_runtime_env()
        if ray.train.get_context().get_local_rank() == 0:  # once per node, off the training thread
            threading.Thread(target=scratch_dirs.sweep, args=(self.log,), name="scratch-sweep", daemon=True).start()
        if self.rank == 0:
            self.first_step = FirstStepReport(self.log, attempt, built.restored_at)
        uploader = BackupUploader(self.store, self.config.job, self.log, self.writer.flush) if self.rank == 0 else None
        if self.rank == 0 and spec.monitoring.tensorboard:
            self.tensorboard = TensorBoardWriter(self.store, self.config.job, attempt, self.log)
        if self.rank == 0 and spec.monitoring.plot:
            self.plots = PlotWriter(self.store, self.config.job, self.writer, self.log)
        if self.rank == 0:
            self.poller = CommandPoller(self.store, self.config.job, self.log)
        if len(built.data.x_val) and not built.validation_steps(spec.batch_size):
            self.log.warning(
                "validation skipped: %d validation examples is less than one global batch of %d",
                len(built.data.x_val),
                spec.batch_size,
            )
        self.log.info(
            "rank %d/%d on %s (pid %d, Ray node %s): %d replicas, %d params, %d steps/epoch of %d examples, "
            "%d validation steps",
            self.rank,
            self.world_size,
            socket.gethostname(),
            os.getpid(),
            ray.get_runtime_context().get_node_id()[:12],
            built.strategy.num_replicas_in_sync,
            built.model.count_params(),
            built.steps,
            spec.batch_size,
            built.validation_steps(spec.batch_size),
        )
        return attempt, uploader

    def _train_segments(
        self, built: _Built, attempt: int, uploader: BackupUploader | None
    ) -> tuple[ControlState, Ending | None]:
        """One ``fit()`` per segment from the restored step to the last epoch (a resumed partial epoch is its own;
        a phase starts its own): the control state at the end, and the ending if training ended early."""
        spec, restored = self.spec, built.restored
        start_epoch, start_step = (restored.epoch, restored.step) if restored else (0, 0)
        state = self._control_state(restored)
        self.agreements = AgreementCount()
        notices = NoticeClock(spec.failures.sigterm_grace_s)  # shared by the attempt's fits, like the count
        interval = self._backup_interval()  # rank 0's, shared by the attempt's fits
        for plan in fit_segments(start_epoch, start_step, spec.epochs, spec.phase_starts()):
            if spec.phase_at(plan.start_epoch) != state.phase:
                state = self._switch_phase(
                    built.model, built.strategy, spec.phase_at(plan.start_epoch), state, plan.start_epoch
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
        self.store.write_worker_summary(self.config.job, _summary(model, self.rank, self.world_size, epochs_done))
        self._save_model(model)  # the final model, before the test split may be evaluated on the best one
        self._evaluate_test(model, built.strategy, built.data, built.encode, epochs_done, state.best_model)
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

    def _compile(self, model: Any, phase: int) -> str:
        """Set what trains in ``phase`` and compile with that phase's optimizer (a fresh one); call in scope."""
        spec = self.spec
        described = configure_phase(model, spec, phase)
        # the optimizer's and compile's variables start from constants, the same on every worker: no broadcast
        with devices.local_initial_values(tf.distribute.get_strategy(), self.log):
            optimizer = _optimizer(spec.phase_optimizer(phase))
            model.compile(
                optimizer=optimizer,
                loss=spec.loss,
                metrics=_metrics(spec),
                steps_per_execution=spec.steps_per_execution,
                jit_compile=spec.jit_compile,
            )  # under mixed_float16, tf_keras wraps the optimizer in a LossScaleOptimizer (model.optimizer)
            optimizer.build(model.trainable_variables)
            build_compiled_containers(model, self._labels, self.log)  # the train step is traced once, not twice
        if spec.jit_compile:
            self.log.info(
                "train step compiled with XLA (jit_compile)"
                if model.jit_compile
                else "jit_compile: true, but tf_keras turned XLA off for this model or strategy"
            )
        return described

    def _switch_phase(
        self, model: Any, strategy: tf.distribute.Strategy, phase: int, state: ControlState, epoch: int
    ) -> ControlState:
        """Start ``phase`` at ``epoch``: recompile with its trainable layers and a fresh optimizer, its LR, and
        new plateau/early-stopping counters (a new segment). The best-model record carries over."""
        spec = self.spec
        with strategy.scope():
            described = self._compile(model, phase)
        chosen = spec.phase_optimizer(phase)
        self.log.info(
            "phase %d/%d '%s' starts at epoch %d: %s; recompiled with a fresh %s optimizer at lr %g (the previous "
            "phase's optimizer state is dropped: its slots belong to other trainable variables)",
            phase + 1,
            len(spec.phases),
            spec.phases[phase].name,
            epoch + 1,
            described,
            chosen.name,
            chosen.learning_rate,
        )
        return state.model_copy(
            update={
                "phase": phase,
                "learning_rate": chosen.learning_rate,
                "segment": state.segment + 1,
                "manual": False,
                "plateau": PlateauState(),
                "early_stopping": MonitorState(),
            }
        )

    def _evaluate_test(
        self,
        model: Any,
        strategy: tf.distribute.Strategy,
        data: datasets.Dataset,
        encode: Any,
        epochs_done: int,
        best: MonitorState,
    ) -> None:
        """The model the job keeps on the held-out test split (if the data has one), on every worker; rank 0
        records it. That is the best model where ``callbacks.best_model`` keeps one (its weights are loaded into
        ``model``, so call this after the final model is saved), else the final model."""
        if data.x_test is None or data.y_test is None:
            return
        steps = steps_per_epoch(len(data.x_test), self.spec.batch_size)
        if not steps:
            self.log.warning(
                "test evaluation skipped: %d test examples is less than one global batch of %d",
                len(data.x_test),
                self.spec.batch_size,
            )
            return
        evaluated, model_epoch, note = self._load_best(model, best, epochs_done)
        stream = distributed_dataset(
            strategy,
            data.x_test,
            data.y_test,
            global_batch=self.spec.batch_size,
            seed=self.spec.seed,
            plan=EpochPlan(0, 1),
            shuffle=False,
            encode=encode,
        )
        try:
            results = model.evaluate(self.reaper.watch(stream), steps=steps, verbose=0, return_dict=True)
        finally:
            self.reaper.reap()
        if self.rank == 0:
            metrics = {key: float(value) for key, value in results.items()}
            self.store.write_evaluation(
                self.config.job,
                Evaluation(
                    examples=steps * self.spec.batch_size,
                    metrics=metrics,
                    epochs_trained=epochs_done,
                    model=evaluated,
                    model_epoch=model_epoch,
                    note=note,
                ),
            )
            self.log.info(
                "test split (%d examples), %s model (epoch %d): %s",
                steps * self.spec.batch_size,
                evaluated,
                model_epoch,
                "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            )

    def _load_best(
        self, model: Any, best: MonitorState, epochs_done: int
    ) -> tuple[Literal["final", "best"], int, str | None]:
        """Load the best model's weights into ``model`` where the job keeps one: (which, its epochs, why not)."""
        if self.spec.callbacks.best_model is None or best.epoch is None:
            return "final", epochs_done, None
        if best.epoch + 1 == epochs_done:
            return "best", epochs_done, None  # the final model is the best one
        with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix("best")) as scratch:
            local = os.path.join(scratch, "model.keras")
            try:
                self.store.download_file(self.config.job, local, "best", "model.keras")
                saved = keras.models.load_model(local, compile=False)
                model.set_weights(saved.get_weights())
            except Exception as exc:  # e.g. a user model whose custom layers tf_keras cannot rebuild by name
                note = f"the best model (epoch {best.epoch + 1}) could not be loaded: {type(exc).__name__}: {exc}"
                self.log.warning("test split: evaluating the final model instead; %s", note)
                return "final", epochs_done, note
        return "best", best.epoch + 1, None

    def _control_state(self, restored: BackupManifest | None) -> ControlState:
        """The controller's state to continue from: the backup's, on the current branch; agreed by all workers."""
        state: ControlState | None = None
        if self.rank == 0:
            if restored is None:
                state = lr_plan.initial_state(self.spec)
            elif restored.control is None:  # written before the controller existed: its LR is all there is
                state = ControlState(learning_rate=restored.learning_rate)
            else:
                state = restored.control
            branch = len(self.store.read_branches(self.config.job))
            if state.branch < branch:
                self.log.info(
                    "continuing on branch %d (resumed from an earlier snapshot); segment %d starts",
                    branch,
                    state.segment + 1,
                )
                state = state.model_copy(update={"branch": branch, "segment": state.segment + 1})
        return agreed(state)  # type: ignore[return-value]

    def _preemption_watcher(self) -> SigtermNotice | None:
        """SIGTERM notices through TensorFlow's coordination service (MultiWorkerMirroredStrategy only)."""
        if self.world_size < 2:
            return None
        return SigtermNotice(self.log)

    def _strategy(self) -> tf.distribute.Strategy:
        threads = max(1, int(self.spec.scaling.cpus_per_worker))
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        cpu_replicas = self.spec.scaling.cpu_replicas_per_worker
        devices.split_cpu(cpu_replicas, self.log)  # before the strategy initialises TensorFlow's devices
        if self.world_size > 1 and self.rank > 0:
            wait_for_chief(self.log)
        return devices.make_strategy(self.world_size, cpu_replicas)

    def _fit(self, built: _Built, plan: EpochPlan, attempt: int, control: TrainingControl) -> None:
        """One ``fit()`` over ``plan``: the data stream, validation stream and callbacks all start where it starts."""
        spec, strategy, data, encode, model = self.spec, built.strategy, built.data, built.encode, built.model
        steps, validation_steps = built.steps, built.validation_steps(spec.batch_size)
        train = distributed_dataset(
            strategy,
            data.x_train,
            data.y_train,
            global_batch=spec.batch_size,
            seed=spec.seed,
            plan=plan,
            shuffle=True,
            encode=encode,
            augment=make_augmenter(spec.data, spec.seed),
            tensors=self._tensors,
        )
        callbacks: list[Any] = []
        if self.first_step is not None and not self.first_step.reported:
            callbacks.append(self.first_step)
        if validation_steps:
            stream = distributed_dataset(
                strategy,
                data.x_val,
                data.y_val,
                global_batch=spec.batch_size,
                seed=spec.seed,
                plan=EpochPlan(plan.start_epoch, plan.end_epoch),
                shuffle=False,
                encode=encode,
                tensors=self._tensors,
            )
            callbacks.append(StreamValidation(self.reaper.watch(stream), validation_steps))
        if self.rank == 0:
            callbacks.append(
                ProgressCallback(
                    self.writer,
                    attempt=attempt,
                    epochs=spec.epochs,
                    steps_per_epoch=steps,
                    global_batch=spec.batch_size,
                    first_step=plan.start_step,
                    control=control,
                    tensorboard=self.tensorboard,
                    tensorboard_every=spec.monitoring.tensorboard_every_steps,
                    plots=self.plots,
                )
            )
        callbacks.append(control)  # after progress: an epoch's history line records the LR it trained with
        if self.pool is not None:
            callbacks.append(RefillAfterFirstStep(self.pool))
        try:
            model.fit(
                self.reaper.watch(train),
                initial_epoch=plan.start_epoch,
                epochs=plan.end_epoch,
                steps_per_epoch=steps - plan.start_step,  # a partial epoch's fit has only the steps still to come
                callbacks=callbacks,
                verbose=0,
            )
        finally:
            self.reaper.reap()  # the iterators' teardown waits on tf.data's threads: not on this thread

    def _backup_interval(self) -> BackupInterval | None:
        """Rank 0's clock for time-based backups inside epochs (``backup.every_seconds``), or None where off.

        With ``auto``, what the job has trained and the restarts it has seen are read in the background (the
        interval uses a prior until then), never on the restart path."""
        chosen = self.spec.backup.time_interval()
        if self.rank != 0 or chosen is None:
            return None
        now = time.monotonic()
        interval = BackupInterval(
            max_overhead=self.spec.backup.max_overhead,
            fixed_s=None if chosen == "auto" else float(chosen),
            started_at=now,
            last_backup_at=now,
        )
        if chosen == "auto":
            threading.Thread(target=self._observe_job, args=(interval,), name="backup-interval", daemon=True).start()
        return interval

    def _observe_job(self, interval: BackupInterval) -> None:
        try:
            attempts = self.store.read_attempts(self.config.job)
            failures = self.store.read_failures(self.config.job)
            trained = sum(r.seconds for r in self.store.read_history_lines(self.config.job))
        except OrchestratorError as exc:  # the prior stands in
            self.log.warning("backup interval: could not read the job's history (%s); using the prior", exc.message)
            return
        interval.observe_job(trained, len(time_to_resume(failures, attempts)))  # restarts that followed a failure

    def _start_warm_pool(self, attempt: int) -> None:
        """The node's first worker keeps a warm process per worker of the job on this node for the next restart
        (``warm_pool``), from the attempt's first step; rank 0 first logs how this attempt's workers started."""
        context = ray.train.get_context()
        if context.get_local_rank() != 0:
            return
        report = (lambda: self._report_warm_start(attempt)) if self.rank == 0 else None
        self.pool = WarmPool(context.get_local_world_size(), self.log, first=report)

    def _publish_runtime_env(self) -> None:
        """Rank 0 of an elastic job: the workers' runtime env, so that the controller can start warm processes
        on a node that joins before the group grows onto it (``orchestrator.elastic``)."""
        if self.rank != 0 or self.config.run is None or not self.spec.scaling.elastic:
            return
        try:
            resize_signal.publish_runtime_env(self.config.run, ray.get_runtime_context().get_runtime_env_string())
        except Exception as exc:  # an optimisation: a grown group's new workers then start cold
            self.log.warning("elastic: could not publish the workers' runtime env (%s: %s)", type(exc).__name__, exc)

    def _report_warm_start(self, attempt: int) -> None:
        attempts = self.store.read_attempts(self.config.job)
        record = next((a for a in attempts if a.attempt == attempt), None)
        if record is None:
            return
        self.log.info(
            "attempt %d: %s",
            attempt,
            describe_warm_start(
                record.workers, _failed_before(record, attempts, self.store.read_failures(self.config.job))
            ),
        )

    def _start_attempt(
        self,
        start_epoch: int,
        start_step: int,
        restored_from: str | None,
        startup: dict[str, float],
        workers: list[WorkerStart],
        replicas: int,
    ) -> int:
        """Rank 0 records this worker group's start; every worker learns the attempt number from it."""
        attempt = 0
        if self.rank == 0:
            record = self.store.start_attempt(
                self.config.job,
                start_epoch=start_epoch,
                start_step=start_step,
                restored_from=restored_from,
                startup=startup,
                workers=workers,
                replicas=replicas,
            )
            attempt = record.attempt
            self.log.info(
                "attempt %d starts at epoch %d, step %d%s; start-up took %s",
                attempt,
                start_epoch + 1,
                start_step,
                f", restored from backup {restored_from}" if restored_from else " (no backup to restore)",
                ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in startup.items()),
            )
        return agreed(attempt)

    def _save_model(self, model: Any) -> None:
        """Every worker saves (saving may run collectives); only rank 0's file goes to the store."""
        with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix("model")) as scratch:
            local = os.path.join(scratch, "final.keras")
            model.save(local)
            if self.rank == 0:
                self.store.upload_file(self.config.job, local, "model", "final.keras")


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


def _failed_before(record: AttemptRecord, attempts: list[AttemptRecord], failures: list[Any]) -> Any:
    """When the failure this attempt restarts after happened, or None (the first attempt, a resume)."""
    earlier = [a.started_at for a in attempts if a.attempt < record.attempt]
    if not earlier:
        return None
    before = [f.failed_at for f in failures if earlier[-1] <= f.failed_at <= record.started_at]
    return before[-1] if before else None


def _input_shape(data: datasets.Dataset, spec: JobSpec) -> tuple[int, ...]:
    resize = spec.data.resize if isinstance(spec.data, NpzData | KerasData) else None
    shape = data.input_shape
    return (*resize, shape[-1]) if resize else shape


def _optimizer(chosen: OptimizerSpec) -> Any:
    options = chosen.model_dump(exclude={"name"}, exclude_none=True)
    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
        "nadam": keras.optimizers.Nadam,
    }
    return classes[chosen.name](**options)


def _metrics(spec: JobSpec) -> list[Any]:
    made = {
        "accuracy": lambda: "accuracy",
        "auc": lambda: keras.metrics.AUC(name="auc"),
        "precision": lambda: keras.metrics.Precision(name="precision"),
        "recall": lambda: keras.metrics.Recall(name="recall"),
    }
    return [made[name]() for name in spec.metrics]


def _summary(model: Any, rank: int, world_size: int, epochs: int) -> WorkerSummary:
    flat = np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in model.get_weights()])
    return WorkerSummary(
        rank=rank,
        world_size=world_size,
        hostname=socket.gethostname(),
        epochs_trained=epochs,
        weights_sha256=hashlib.sha256(flat.tobytes()).hexdigest(),
        weights_norm=float(np.linalg.norm(flat.astype(np.float64))),
        learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
    )


class _StoreLogHandler(logging.Handler):
    def __init__(self, writer: StoreWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.log(self.format(record) + "\n")


def _worker_logger(writer: StoreWriter, rank: int) -> logging.Logger:
    logger = logging.getLogger(f"{LOGGER_NAME}.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _StoreLogHandler(writer)
    formatter = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    formatter.converter = time.gmtime  # UTC, as driver.log and controller.log (`logs --since` reads them alike)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(handler.formatter)
    logger.addHandler(stream)
    return logger
