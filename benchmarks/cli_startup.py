"""How long the command line takes to answer without doing work: ``mgnp --help`` and ``mgnp --version`` (which
import no torch) beside ``python -c "import torch"`` (what every command that runs a model pays once).

    python benchmarks/cli_startup.py [--repeats 5]

Runs the three alternately, each in a fresh process; writes ``results/cli_startup.json`` with the medians and the
ratio of ``--help`` to the torch import.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from harness import parser, write

COMMANDS = {"mgnp --help": [sys.executable, "-m", "mgnp_lens.cli", "--help"],
            "mgnp --version": [sys.executable, "-m", "mgnp_lens.cli", "--version"],
            "import torch": [sys.executable, "-c", "import torch"]}


def main() -> None:
    ap = parser(__doc__, "cli_startup")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    times = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():  # alternately: the machine's load hits all three alike
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(medians)
    write("cli_startup", {"repeats": args.repeats, "seconds": times, "median_seconds": medians,
                          "help_over_torch_import": medians["mgnp --help"] / medians["import torch"]})


if __name__ == "__main__":
    main()
