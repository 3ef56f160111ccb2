"""The benchmark harness: layers side by side, same machine, same run, interleaved.

Run ``python -m benchmarks --quick`` (seconds) or ``--full`` (minutes); see
:mod:`benchmarks.cli` for the options and ``docs/performance.md`` for the latest run.
Not part of the installed package.
"""
