"""Evaluation statistics: metrics, paired inference, power, agreement, human eval, table, plots.

Modules: `data` (eval JSONL → aligned [seeds, problems] matrices), `metrics`, `inference`,
`power`, `kappa`, `human_eval`, `table` (`build_table`), `plots` (imports matplotlib).
"""
