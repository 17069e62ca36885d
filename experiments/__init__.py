"""The research record: the mini ladder, its diagnostics and every result they produced.

A plain package at the repository root, not installed with ``d3ssl_zoo``: run its modules from
the repository root (``python -m experiments.mini_ladder ...``, ``python -m experiments.report
<folder>``). Each folder under ``experiments/results/`` holds the exact command that made it
(``results.json`` and ``command.sh``) and a ``results.md`` generated from its ``results.json``.
"""
