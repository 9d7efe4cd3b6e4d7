"""Trainers: torch.py trains nn.Modules epoch by epoch; estimator.py fits sklearn/xgboost models."""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class History:
    rows: list = field(default_factory=list)   # one dict per epoch -> metrics.csv
    steps: Optional[np.ndarray] = None         # per-step train loss -> steps.csv
    iterations_per_epoch: int = 0
    diverged: bool = False
    stopped_early: bool = False
    stopped_by: Optional[str] = None           # a callback's reason, e.g. "pruned" (an Optuna pruner)
    test_probs: Optional[np.ndarray] = None    # (n_test, n_classes) -> predictions.csv
    extras: dict = field(default_factory=dict)  # model-specific facts for summary.json
    train_s: float = 0.0                       # seconds training (epochs only), every process that trained it
    wall_s: float = 0.0                        # seconds in all (set-up to files written), every process
