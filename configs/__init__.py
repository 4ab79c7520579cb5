"""The run configs, importable as a package: `configs/<model>.py` files share `configs/common.py`."""
