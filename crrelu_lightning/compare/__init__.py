"""Activation × seed comparison runner (``crrelu-lightning compare``); see docs/compare.md.

``runner`` launches ordinary ``fit``/``test`` subprocesses, ``collect`` reads their TensorBoard scalars,
``report`` writes results.csv / summary.md and ``plots`` the PNG figures.
"""
