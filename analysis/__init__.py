"""Scaling-law analysis: read run records, clean curves, fit laws, draw figures, report.

Modules (import them directly; importing the package loads nothing heavy):

- ``collect``   run records under one or more roots -> one tidy table (Parquet cache)
- ``curves``    seed averaging, smoothing, warm-up drop, isotonic regression, threshold
                crossings, values at FLOP budgets, compute-efficient frontiers
- ``fitting``   fit primitives and ``FitResult``; ``laws`` the studies' laws
- ``figures``   one figure style; ``report`` report.md and laws.json
- ``pipeline``  detect the studies a table supports and run them end to end
- ``cli_fit``   ``python -m analysis fit LAW --csv FILE``: fit one law to your own table
- ``synthetic`` run records drawn from known laws (tests and demos)

Command line: ``python -m analysis --runs DIR --out DIR`` (see docs/analysis.md).
"""
