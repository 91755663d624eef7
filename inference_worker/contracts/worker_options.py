"""Every ``inference-worker serve`` option: one field each, the worker's config and its command line.

``SERVE`` is the worker's option table: ``cli`` makes one flag and one
``KILN_WORKER_<NAME>`` variable per field, ``config`` takes its defaults and
numeric bounds from the fields, and the platform's ``LaunchSpec`` spells its
flags through them (``launch.py``). Bounds that are not a range (a name's
characters, a URL's scheme) stay in ``config``'s ``__post_init__``.
"""

from __future__ import annotations

from inference_worker.contracts.batching import BATCHING
from inference_worker.contracts.options import Kind, OptionField, OptionTable

MIB = 1024 * 1024
ENV_PREFIX = "KILN_WORKER_"

MODEL_NAME: OptionField[str | None] = OptionField(
    "model_name", Kind.TEXT, None, "name clients use in URLs and requests", required=True
)
MODEL_PATH: OptionField[str | None] = OptionField(
    "model_path", Kind.TEXT, None, "the ONNX file to serve", required=True
)
MODEL_VERSION = OptionField("model_version", Kind.TEXT, "1", "version clients may name")
MODEL_SHA256: OptionField[str | None] = OptionField(
    "model_sha256", Kind.LOWER, None, "refuse to start unless the file has this digest"
)
HOST = OptionField("host", Kind.TEXT, "127.0.0.1", "address to listen on")
HTTP_PORT = OptionField("http_port", Kind.INT, 8080, "HTTP port (0: any free port)", low=0, high=65535)
GRPC_PORT = OptionField(
    "grpc_port", Kind.INT, 8081, "gRPC port (0: any free port, -1: no gRPC)", low=-1, high=65535
)
DEVICE = OptionField(
    "device", Kind.TEXT, "cpu", "cpu or cuda:N (falls back to the CPU, with a warning, without CUDA)"
)
INTRA_OP_SPINNING = OptionField(
    "intra_op_spinning", Kind.SWITCH, False, "ONNX Runtime threads spin-wait between parallel sections"
)
INLINE_BELOW_US = OptionField(
    "inline_below_us", Kind.INT, 200,
    "run a batch on the event loop's thread when batches as large took at most this many microseconds "
    "(0: always on the instance's thread)",
    unit="us", low=0, high=100_000,
)  # fmt: skip
MAX_BODY_BYTES = OptionField(
    "max_body_bytes", Kind.INT, 64 * MIB, "largest HTTP body (413 beyond)", unit="bytes",
    low=1024, high=4096 * MIB,
)  # fmt: skip
MAX_GRPC_MESSAGE_BYTES = OptionField(
    "max_grpc_message_bytes", Kind.INT, 64 * MIB, "largest gRPC message", unit="bytes",
    low=1024, high=2047 * MIB,
)  # fmt: skip
MAX_TENSOR_ELEMENTS = OptionField(
    "max_tensor_elements", Kind.INT, 1 << 24, "largest element count of one tensor", low=1, high=1 << 34
)
MAX_QUEUE_BYTES = OptionField(
    "max_queue_bytes", Kind.INT, 1024 * MIB, "input bytes queued, all requests together (503 beyond)",
    unit="bytes", low=1024,
)  # fmt: skip
DRAIN_TIMEOUT_S = OptionField(
    "drain_timeout_s", Kind.FLOAT, 30.0, "longest SIGTERM waits for in-flight requests", unit="s",
    low=0.001, high=3600,
)  # fmt: skip
SHUTDOWN_DELAY_S = OptionField(
    "shutdown_delay_s", Kind.FLOAT, 0.0, "after SIGTERM, keep serving this long before draining", unit="s",
    low=0, high=600,
)  # fmt: skip
SYSTEM_SHARED_MEMORY = OptionField(
    "system_shared_memory", Kind.SWITCH, False,
    "serve the system shared memory extension (for clients on this host; off behind a gateway)",
)  # fmt: skip
MAX_SHM_REGIONS = OptionField(
    "max_shm_regions", Kind.INT, 64, "shared memory regions registered at once (400 beyond)",
    unit="regions", low=1, high=4096,
)  # fmt: skip
MAX_SHM_BYTES = OptionField(
    "max_shm_bytes", Kind.INT, 1024 * MIB, "bytes of shared memory registered, all regions together",
    unit="bytes", low=1, high=1 << 40,
)  # fmt: skip
LISTEN_FILE = OptionField(
    "listen_file", Kind.TEXT, "", "write the bound address and ports here (JSON) once listening"
)
REPORT_URL: OptionField[str | None] = OptionField(
    "report_url", Kind.TEXT, None, "platform URL the worker POSTs reports to"
)
REPORT_TOKEN: OptionField[str | None] = OptionField(
    "report_token", Kind.TEXT, None, "bearer token for reports", secret=True
)
REPORT_INTERVAL_S = OptionField(
    "report_interval_s", Kind.FLOAT, 5.0, "seconds between reports", unit="s", low=0.05, high=3600
)
WORKER_ID: OptionField[str | None] = OptionField(
    "worker_id", Kind.TEXT, None, "identity in reports (default: hostname-pid)"
)
LOG_LEVEL = OptionField("log_level", Kind.LOWER, "info", "debug, info, warning or error")
WARMUP_INPUTS = OptionField(
    "warmup_inputs", Kind.TEXT, "", "the input shapes the conversion validated (JSON, contracts.warmup)"
)
CLASS_LABELS = OptionField(
    "class_labels",
    Kind.TEXT,
    "",
    "labels of the outputs' classes for classification answers (JSON, contracts.labels)",
)

SERVE = OptionTable(
    MODEL_NAME, MODEL_PATH, MODEL_VERSION, MODEL_SHA256, HOST, HTTP_PORT, GRPC_PORT, DEVICE,
    INTRA_OP_SPINNING, INLINE_BELOW_US, BATCHING, MAX_BODY_BYTES, MAX_GRPC_MESSAGE_BYTES,
    MAX_TENSOR_ELEMENTS, MAX_QUEUE_BYTES, SYSTEM_SHARED_MEMORY, MAX_SHM_REGIONS, MAX_SHM_BYTES,
    DRAIN_TIMEOUT_S, SHUTDOWN_DELAY_S, LISTEN_FILE, REPORT_URL, REPORT_TOKEN, REPORT_INTERVAL_S,
    WORKER_ID, LOG_LEVEL, WARMUP_INPUTS, CLASS_LABELS,
)  # fmt: skip
"""The ``serve`` options, batching included (looked up in ``BATCHING`` on every read)."""
