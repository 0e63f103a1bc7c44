"""Keras model builders, by name (`--model`): see `builders.py`.

Width-scaled HeteroFL sub-models (cuts, masks, sizes) are in `width.py`;
`flops.py` counts what a model costs to train.
"""

from tff_pipeline.models.builders import build_2nn
from tff_pipeline.models.builders import build_cnn
from tff_pipeline.models.builders import build_linear
from tff_pipeline.models.builders import count_parameters
from tff_pipeline.models.builders import ModelBuilder
from tff_pipeline.models.builders import MODELS
from tff_pipeline.models.builders import MNIST_MODELS
