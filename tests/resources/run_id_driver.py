"""Stand-in for ``python -m gflow resume|replay OLD_RUN --run-id NEW_RUN`` while the CLI has no --run-id
(the lead adds it): runs the real CLI command, and the run it creates gets the id NEW_RUN. Tests use it
only when ``gflow resume --help`` lacks --run-id; the server itself always starts ``python -m gflow``."""

import sys

from gflow.flows import _flow

args = sys.argv[1:]
at = args.index("--run-id")
wanted = [args[at + 1]]
del args[at:at + 2]
_real = _flow.new_run_id
_flow.new_run_id = lambda: wanted.pop() if wanted else _real()  # the first run created is the new run

from gflow.cli import main  # noqa: E402

main(args, prog_name="gflow")
