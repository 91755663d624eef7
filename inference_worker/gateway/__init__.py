"""The gateway: one stable address splitting traffic between deployment variants.

``inference-worker gateway`` (``python -m inference_worker gateway``) runs ``main.main``.

- ``main``          the entry point: options, logging, the event loop
- ``app``           the ``Gateway``: lifecycle, the request path (arm, replica, proxy)
- ``activator``     requests held for a variant scaled to zero while the platform starts a replica
- ``identity``      what it says it is (server metadata: name, version, extensions)
- ``config``        its options (``KILN_GATEWAY_*``) and the frozen ``GatewayConfig``
- ``routing``       the routing table's hot-path objects and the pure ``choose_arm`` / ``choose_replica``
- ``server``        the HTTP server the gateway answers on (over ``http_base``)
- ``proxy``         pooled upstream connections to replicas, with limits and timeouts
- ``grpc_proxy``    the gRPC server: ``inference.GRPCInferenceService`` routed as HTTP is
- ``grpc_wire``     the few protobuf wire operations it does on message bytes
- ``stats``         Redis: the table watcher and the stats publisher
- ``metrics``       counters per (deployment, variant, version): Prometheus and the stats snapshot
- ``shadow``        the copy handed to the shadow process, and the comparison (pure)
- ``mirror``        the gateway's side of the shadow process
- ``shadow_child``  the shadow process (``python -m inference_worker.gateway.shadow_child``)

Messages to and from the platform (the routing table, the stats) are in
``inference_worker.contracts``; nothing here spells their keys.
"""
