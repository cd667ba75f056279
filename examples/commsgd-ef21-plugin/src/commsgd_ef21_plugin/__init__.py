"""Example commsgd plugin: EF21 (ef21.py), a bfloat16 compressor (bf16.py), a ridge task
(ridge.py) and a sweep preset (conf/). Registered in pyproject.toml's entry points."""
