"""commsgd: a benchmark suite for communication-efficient distributed SGD.

The engine: compressors, algorithms, backends, the training loop and tracking.
"""

__version__ = "0.1.0"
