"""Evaluation of trained models and baselines: ``evaluate`` (sets, rows, intervals, the shift null,
maps), its statistics (``stats``), metrics, baselines (ridge, stimulus, story clock), the paper's
protocol, the report and figures, voxel maps, the training-data ROI, and the synthetic oracle.
"""
