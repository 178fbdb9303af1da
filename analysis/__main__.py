"""``python -m analysis``: the analysis command line.

- ``python -m analysis --runs DIR [--runs DIR2] --out DIR [--metric M] [--budget C]``
  runs the pipeline (also ``python -m analysis report ...``);
- ``python -m analysis synth --out DIR [--small]`` writes synthetic run records;
- ``python -m analysis fit ...`` fits one law to a CSV (see ``analysis.cli_fit``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; no subcommand means the full pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        from analysis import synthetic

        return synthetic.main(argv[1:])
    if argv and argv[0] == "fit":
        from analysis import cli_fit

        return cli_fit.main(argv[1:])
    if argv and argv[0] in ("report", "run"):
        argv = argv[1:]
    from analysis import pipeline

    return pipeline.main(argv)


if __name__ == "__main__":
    sys.exit(main())
