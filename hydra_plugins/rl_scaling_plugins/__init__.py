"""rl-scaling's Hydra plugins: the ``plan`` sweeper and the ``local``/``slurm`` launchers.

Hydra loads plugins only from the ``hydra_plugins`` namespace package; the logic they use is in
:mod:`rl_scaling.launch` and :mod:`sweeps.plan`.
"""
