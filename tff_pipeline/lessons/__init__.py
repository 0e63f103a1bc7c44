"""Lessons for teachers: small federated regressions with closed-form answers.

Each lesson runs a few federated linear regressions through the library
(`tasks.build_regression_task` and `loop.run_federated`), computes what the
theory says the numbers must be, and returns a result whose `check()` says
whether the closed-form check holds. Linear regression with mean squared
error is the one federated problem whose every iterate can be written down:
a full-batch gradient step on client i is the affine map

    w -> (I - eta A_i) w + eta b_i,   A_i = 2 X_i^T X_i / n_i,
                                      b_i = 2 X_i^T y_i / n_i,

(X_i with a column of ones for the bias), so tau local steps are an affine
map w -> B_i w + c_i too, and a round of FedAvg is the average of those maps.

1. `fedsgd_equals_gd` (`fedsgd.py`): FedSGD with all clients and example
   weights is gradient descent on the pooled data (McMahan et al. 2017,
   arXiv 1602.05629).
2. `local_steps_drift` (`local_steps.py`): FedAvg with tau > 1 local steps
   on non-IID shards drifts from the pooled optimum (Karimireddy et al.
   2020, arXiv 1910.06378; Charles and Konecny 2021, arXiv 2103.05032).
3. `compute_heterogeneity` (`heterogeneous_compute.py`): unequal local
   steps bias FedAvg; FedNova's normalisation (Wang et al. 2020, arXiv
   2007.07481) in the `compensated` aggregator removes the bias.
4. `dp_noise` (`differential_privacy.py`): DP-FedAvg (McMahan et al. 2018,
   arXiv 1710.06963) trades accuracy for a smaller epsilon.

Every lesson takes `small=True` for a fast version (tests, the notebook's
small mode) that still passes its check. The package: `references` (the
NumPy recursions and closed forms), `base` (the result base class and
shared plumbing), one module per lesson, `catalog` (the lessons by name,
`run_lessons`) and `report` (`write_report` draws one PNG per lesson and a
`lessons.md` table).
"""

from tff_pipeline.lessons.base import client_arrays
from tff_pipeline.lessons.catalog import LESSON_ORDER
from tff_pipeline.lessons.catalog import LESSONS
from tff_pipeline.lessons.catalog import run_lessons
from tff_pipeline.lessons.differential_privacy import dp_noise
from tff_pipeline.lessons.fedsgd import fedsgd_equals_gd
from tff_pipeline.lessons.heterogeneous_compute import compute_heterogeneity
from tff_pipeline.lessons.heterogeneous_compute import (
    HETEROGENEOUS_COMPUTE_SETTINGS)
from tff_pipeline.lessons.local_steps import local_steps_drift
from tff_pipeline.lessons.references import fedavg_fixed_point
from tff_pipeline.lessons.references import fedavg_iterates
from tff_pipeline.lessons.references import fednova_fixed_point
from tff_pipeline.lessons.references import fednova_iterates
from tff_pipeline.lessons.references import local_gd_map
from tff_pipeline.lessons.references import mse_gradient
from tff_pipeline.lessons.references import weighted_client_optimum
from tff_pipeline.lessons.report import png_bytes
from tff_pipeline.lessons.report import summary_table
from tff_pipeline.lessons.report import write_report
