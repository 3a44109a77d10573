"""What runs inside a Ray Train worker: the training session, its input pipeline and callbacks.

Import-light on purpose: the driver pickles ``train_loop_per_worker`` by reference, and TensorFlow must be
imported only after ``TF_USE_LEGACY_KERAS=1`` is set (tf_keras, not Keras 3: docs/architecture.md,
"Keras 3 under MultiWorkerMirroredStrategy").
"""
