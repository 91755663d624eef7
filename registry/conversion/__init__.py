"""The sandboxed conversion child: what runs on an untrusted model, in its own process. No Django.

``registry.sandbox.run_child`` starts ``python -m registry.conversion COMMAND REQUEST RESULT``
under time and memory limits; the Django side imports none of these modules but the pure
``program_trees`` (the upload check walks a ``.pt2``'s trees as the child reads them), and they
import nothing of Django or of the apps (a test imports every one in a fresh interpreter and checks).

- ``__main__``: reads the request, runs ``inspect`` or ``convert``, writes the JSON result;
- ``channel``: ``ChildError`` and ``progress``, how the child talks to its parent;
- ``inspection``: open an upload without executing pickles, read its signature;
- ``convert``: export, check, parity, profile, protocol costs, in that order;
- ``torch_sources``, ``onnx_export``, ``onnx_check``, ``parity``, ``profiling``,
  ``protocol_costs``: the stages, pure functions testable in-process without a database.
"""
