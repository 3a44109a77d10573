"""orchestrator: distributed TensorFlow training on preemptible (spot) Ray clusters."""

__version__ = "0.1.0"
