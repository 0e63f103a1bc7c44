"""Model-update aggregators: a base chosen by name, wrapped by flags.

See `build.py` for the registry and the composition, and one module per
factory (`compensation.py`, `precise_sum.py`, `robust.py`, and
`masked_mean.py`, HeteroFL's mean over the clients holding each coordinate,
which `build_masked_mean` builds for `--aggregator=mean` when clients train
width-scaled sub-models).
"""

from tff_pipeline.aggregators.build import AggregatorBuilder
from tff_pipeline.aggregators.build import AGGREGATORS
from tff_pipeline.aggregators.build import build_aggregator
from tff_pipeline.aggregators.build import build_masked_mean
from tff_pipeline.aggregators.build import COMPRESSION_THRESHOLD
from tff_pipeline.aggregators.build import Factory
