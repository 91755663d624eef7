"""Whether a model's first dimension is the batch, as its ONNX file says.

The worker stacks requests along the first dimension when every input and output has a dynamic
one, and splits the answers back by rows. A model whose output has a dynamic first dimension that
is not the batch (``x.flatten()``: four rows per sample) cannot be served that way: each request
runs alone and gets its whole answer. Conversion finds such outputs (it runs the model at the
batch sizes of its parity check) and records it in the ONNX file's metadata, which the worker
reads as it loads the model. A file without the key (converted earlier, or given to the worker by
hand) batches by its shapes.
"""

from __future__ import annotations

from collections.abc import Mapping

METADATA_KEY = "kiln.batch_dimension"
"""The ONNX ``metadata_props`` entry."""
NOT_BATCH = "none"
"""Its value for a model whose first dimension is not the batch."""


def batches(metadata: Mapping[str, str]) -> bool:
    """False when the model's metadata says its first dimension is not the batch."""
    return metadata.get(METADATA_KEY) != NOT_BATCH
