"""``python -m gflow.executors.slurm.element SPEC [--index N]``: what ``gflow worker SPEC`` does, for an element
running in the driver's Python environment: the same :func:`gflow.images.worker.run_spec`, the index from
``--index`` or ``SLURM_ARRAY_TASK_ID``, the artifact store from the profile (``GFLOW_ARTIFACTS``), the same exit
codes. It only skips the command line's imports (click, rich, the server's): about 40 ms less CPU per element,
which is a sixth of a trivial element's cost (benchmarks/bench_slurm.py).
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m gflow.executors.slurm.element SPEC_DIGEST [--index N]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    index: int | None = None
    if len(args) == 3 and args[1] == "--index" and args[2].isdigit():
        index = int(args[2])
    elif len(args) != 1:
        print(f"{USAGE} (got {' '.join(args) or 'nothing'})", file=sys.stderr)
        return 2
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.images.worker import array_index, run_spec

    return run_spec(open_artifacts(load_profile().artifacts), args[0], array_index(index))


if __name__ == "__main__":
    sys.exit(main())
