"""Analysis of a sweep's results store: the paper's tables (`python -m analysis.tables SWEEP_DIR`) and one
self-contained Plotly report (`python -m analysis.report SWEEP_DIR`), with the paper's published numbers beside ours.

Modules: `paper` (the published numbers), `runs` (which runs a table reports and their mean +- std over seeds),
`stats` (paired significance tests), `tables` (build, render, CLI), `report` (figures, HTML, CLI).
"""
