"""Learning-process builders, by name (`--algorithm`): see `build.py`."""

from tff_pipeline.algorithms.build import Algorithm
from tff_pipeline.algorithms.build import AlgorithmBuilder
from tff_pipeline.algorithms.build import ALGORITHMS
from tff_pipeline.algorithms.build import build_algorithm
from tff_pipeline.algorithms.build import build_fedavg
from tff_pipeline.algorithms.build import build_fedprox
from tff_pipeline.algorithms.build import build_fedsgd
from tff_pipeline.algorithms.build import build_width_masked
from tff_pipeline.algorithms.build import CLIENT_LOOP
from tff_pipeline.algorithms.build import ClientInputFn
from tff_pipeline.algorithms.build import ModelFn
from tff_pipeline.algorithms.build import one_pass
from tff_pipeline.algorithms.build import repeated_batches
