"""Scaling-law analysis: read run records, clean curves, fit laws, draw figures, report.

Modules (import them directly; importing the package loads nothing heavy):

- ``collect``   run records under one or more roots -> one tidy table (Parquet cache); the
                record format itself is ``rl_scaling.record``
- ``curves``    seed averaging, smoothing, warm-up drop, isotonic regression, threshold
                crossings, values at FLOP budgets, compute-efficient frontiers
- ``fitting``   generic fit primitives and ``FitResult`` (power laws, fixed effects,
                bootstrap, delta method, rolling CV)
- ``detect``    which study an experiment runs: its declared ``study`` block, else guessed
- ``study``     what every study driver shares (``Study``, ``Options``, ``attempt``...)
- one module per study, its laws and its driver:
  ``scaling``        Hilton et al.: curves, compute frontier, intrinsic performance (and the
                     ``curves`` study)
  ``isoflop``        isoFLOP profiles, envelope, Chinchilla Approach 3, quadratic surface,
                     method choice, forecasts, return vs loss
  ``utd``            Rybkin et al.'s UTD workflow, Pareto frontier, sigma* for a budget
  ``generalization`` data and compute to sufficient generalization vs complexity
- ``figures``   every plot, in one style; ``report`` report.md and laws.json
- ``pipeline``  collect -> detect -> dispatch to the study drivers -> write outputs
- ``cli_fit``   ``python -m analysis fit LAW --csv FILE``: fit one law to your own table
- ``synthetic`` run records drawn from known laws (tests and demos)

Command line: ``python -m analysis --runs DIR --out DIR`` (see docs/analysis.md).
"""
