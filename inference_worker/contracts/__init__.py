"""Every message between the control plane and the data plane, once (no Django here).

Both planes import these modules; neither writes a message's keys itself.

- ``options``         the option-table type: a typed field per option (bounds, default, unit, help)
- ``batching``        the batching table and ``BatchingConfig`` (the API's ``batching`` object)
- ``worker_options``  every ``inference-worker serve`` option (batching included)
- ``launch``          ``LaunchSpec``: the worker's command line, built by the platform, read by the worker
- ``routing``         the routing table the platform publishes and the gateway follows
- ``report``          the report a worker pushes to the platform
- ``gateway_stats``   the counters each gateway writes for the platform to read
- ``gateway_table``   which routing table each gateway holds (its digest), for convergence
- ``warmup``          the input shapes a conversion validated, which the worker warms up with
- ``batch_dimension`` the ONNX metadata entry that says a model's first dimension is not the batch
- ``activation``      a gateway's request for a replica of a variant scaled to zero
- ``histograms``      a histogram as the report and the stats carry it
- ``errors``          ``ContractError``: what every ``parse_*`` raises, naming the field
- ``wire``            reading decoded JSON into typed values (the ``parse_*`` functions' helpers)

Each message module (routing, report, gateway_stats, gateway_table, activation, launch) has a schema
name, frozen records, ``encode_*`` and ``parse_*``; the batching options travel inside the launch spec
and the API, so they have the encode and parse but no schema of their own. A round-trip
test each lives in ``tests/inference_worker/contracts``, and
``test_spelled_once.py`` there keeps every other module from spelling their keys.
Modules here import only each other (never the package itself) and the standard library.
"""
