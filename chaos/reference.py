"""The uninterrupted run a chaos run is compared with: the same spec, with the chaos run's applied ``set-lr``
commands recorded with their acknowledgements, so that each is applied at the very step it was applied in the
chaos run (as a restored worker group replays it: docs/lr-control.md), and nothing else.

Run in its own process, attached to the chaos run's Ray cluster::

    python -m chaos.reference CHAOS_STORE_URL REFERENCE_STORE_URL RAY_ADDRESS
"""

from __future__ import annotations

import sys

from orchestrator.records import CommandAck
from orchestrator.store import JobStore

JOB = "chaos"


def prepare(chaos: JobStore, reference: JobStore) -> list[CommandAck]:
    """Record the job and its applied set-lr commands (renumbered from 1, in order of their sequence) in the
    reference store; returns the acknowledgements recorded there."""
    reference.create_job(chaos.load_job(JOB).spec)
    acks = chaos.read_acks(JOB)
    recorded = []
    for command in sorted(chaos.read_commands(JOB), key=lambda c: c.seq):
        ack = acks.get(command.seq)
        if command.kind != "set_lr" or ack is None or ack.void is not None:
            continue
        numbered = reference.add_command(JOB, command)
        copied = ack.model_copy(update={"seq": numbered.seq, "attempt": 1, "branch": 0})
        reference.write_ack(JOB, copied)
        recorded.append(copied)
    return recorded


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m chaos.reference CHAOS_STORE_URL REFERENCE_STORE_URL RAY_ADDRESS", file=sys.stderr)
        return 2
    chaos, reference = JobStore(argv[0]), JobStore(argv[1])
    acks = prepare(chaos, reference)
    print(f"reference: {len(acks)} set-lr command(s) replayed at their recorded steps", flush=True)
    from orchestrator.launcher import connect_ray
    from orchestrator.runner import drive_job

    connect_ray(argv[2])
    outcome = drive_job(reference, JOB, on_update=lambda snapshot: None)
    print(f"reference: {outcome.status}", flush=True)
    return 0 if str(outcome.status) == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
