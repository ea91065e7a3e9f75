"""Activation × seed comparison runner (``crrelu-lightning compare``); see docs/compare.md.

``commands`` builds each run's ordinary ``fit``/``test`` command line, ``runner`` executes them (resumably,
K at a time), ``checkpoints`` finds resume/best checkpoints, ``collect`` reads TensorBoard scalars,
``report`` writes results.csv / summary.md and ``plots`` the PNG figures.
"""
