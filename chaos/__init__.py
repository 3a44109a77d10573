"""The chaos run: one tiny job driven through a seeded random sequence of faults (worker kills and notices,
node drains and losses, the driver's loss, backup uploads cut off, the store unreachable, set-lr and stop/resume
in flight), then checked against what the product promises (docs/recovery.md, "Chaos").

``python -m chaos --seed S --faults N`` runs one; ``tests/integration/test_chaos.py`` a short one.
"""
