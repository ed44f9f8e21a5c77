"""The reproducible benchmark: STT against its ablations and baselines on one seeded cohort.

Modules: ``config`` (BenchmarkConfig and its TOML sections), ``runner``
(run_benchmark: cohort, training under an equal budget, inference,
evaluation, tracking), ``leaderboard`` (columns, machine description, CSV and
Markdown). See ``docs/benchmark.md``.
"""
