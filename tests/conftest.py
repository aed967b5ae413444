"""Suite-wide settings.

pytest runs with two worker processes (``-n 2``) on a 2-core machine: each worker uses one intra-op
thread, because two processes with two OpenMP threads each on two cores spin-wait on each other and make
small tensor ops up to 100x slower. Subprocesses started by tests (torchrun) inherit OMP_NUM_THREADS.
"""

import os
import sys
from pathlib import Path

import torch

# Helpers shared by test modules (realsize.py) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
