"""Kiln's data plane: an ONNX Runtime inference worker speaking the Open Inference Protocol.

Installed alone into worker images: it imports nothing of the control plane.
"""

__version__ = "0.1.0"
