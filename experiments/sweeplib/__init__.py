"""The library behind `python -m experiments.sweep`: `spec` (the runs of a sweep file), `runner`
(running them), `report` (their results)."""
