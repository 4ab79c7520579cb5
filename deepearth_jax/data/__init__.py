"""Data: the memory-mapped store, conversion, synthetic data, splits and input pipelines.

`data/` never imports the trainer or the models.
"""
