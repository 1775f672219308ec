"""Speed and comparison scripts for facealign (``bench/speed.py``, ``bench/compare.py``)."""
