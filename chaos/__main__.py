"""``python -m chaos [--seed S] [--faults N] [--kinds a,b] [--work DIR]``: one chaos run; exit 0 when every
check passed, 1 with what failed and how to replay it."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from chaos.plan import KINDS


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: from the clock)")
    parser.add_argument("--faults", type=int, default=20, help="how many faults (default 20)")
    parser.add_argument("--kinds", default="", help=f"comma-separated subset of: {', '.join(KINDS)}")
    parser.add_argument(
        "--epochs", type=int, default=None, help="the job's epochs (default: enough for the faults under load)"
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for logs and stores (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.faults < 1:
        parser.error(f"--faults: {args.faults} is not a positive number of faults")
    if args.epochs is not None and args.epochs < 2:
        parser.error(f"--epochs: {args.epochs} is too few (at least 2)")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(KINDS)}")
    args.kinds = kinds or None
    return args


def replay_command(seed: int, faults: int, kinds: tuple[str, ...] | None, epochs: int | None = None) -> str:
    return (
        f"python -m chaos --seed {seed} --faults {faults}"
        + (f" --kinds {','.join(kinds)}" if kinds else "")
        + (f" --epochs {epochs}" if epochs is not None else "")
    )


def main(argv: list[str]) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    replay = replay_command(seed, args.faults, args.kinds, args.epochs)
    print(f"chaos: seed {seed}, {args.faults} faults (replay: {replay})")
    work = args.work or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    from chaos.run import ChaosError, run_chaos

    try:
        run = run_chaos(work, seed, args.faults, args.kinds, epochs=args.epochs)
    except ChaosError as exc:
        print(f"chaos: FAILED (seed {seed}): {exc}", file=sys.stderr)
        print(f"chaos: logs in {work}; replay: {replay}", file=sys.stderr)
        return 1
    except Exception:  # a fault that could not be done: the run is void, say so with the replay
        traceback.print_exc()
        print(f"chaos: ERROR (seed {seed}): the run could not be completed (above)", file=sys.stderr)
        print(f"chaos: logs in {work}; replay: {replay}", file=sys.stderr)
        return 1
    injected = [f for f in run.plan.faults if f.injected_at is not None]
    counts = Counter(f.kind for f in injected)
    kinds = ", ".join(f"{kind} {counts[kind]}" for kind in KINDS if counts[kind])
    print(f"chaos: PASSED, seed {seed}: {len(injected)}/{len(run.plan.faults)} faults ({kinds})")
    print(f"chaos: {run.epochs} epochs in {run.seconds:.0f} s")
    for line in run.checks:
        print(f"  ok: {line}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
