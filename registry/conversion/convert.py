"""The ``convert`` command of the sandboxed child: export, check, parity, profile. Pure: no Django.

``convert(request) -> {"signature", "report"}``; every failure is a ``ChildError``
whose ``extra["report"]`` holds the report as far as it got. Codes:

- ``invalid_request``: the request itself is malformed (a bug in the parent);
- ``invalid_artifact`` / ``invalid_signature``: the artifact cannot be opened, or
  does not take (or return) the tensors the signature declares;
- ``model_failed``: PyTorch itself raises on random inputs drawn from the signature;
- ``export_failed``: the exporter failed (the message names the operator when torch does);
- ``check_failed``: onnx.checker, shape inference or ONNX Runtime rejects the graph (or,
  for an ONNX upload, ONNX Runtime fails on sample inputs); ``external_data_refused``;
- ``parity_failed``: ONNX Runtime disagrees with the reference beyond the tolerance,
  or fails on one of the batch sizes;
- ``out_of_memory``: an allocation failed under the sandbox's memory limit;
- ``failed``: anything unexpected (the traceback goes to the child's stderr).

Parity for ONNX uploads, which have no PyTorch source, compares ONNX Runtime with
``onnx.reference.ReferenceEvaluator`` (numpy, op by op) when the file is under
``REFERENCE_MAX_BYTES`` and the evaluator implements every operator; otherwise the
report's parity is ``{"passed": None, "status": "not applicable: <reason>"}``.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from registry.conversion.channel import ChildError, progress
from registry.conversion.inspection import onnx_signature
from registry.conversion.onnx_check import CheckedModel, check_onnx_file, export_notes, mark_if_not_batched
from registry.conversion.onnx_export import DimRange, first_line, raise_if_out_of_memory
from registry.conversion.onnx_upload import fixed_batch_note, free_fixed_batch, onnx_reference, ort_runner
from registry.conversion.parity import (
    DEFAULT_BATCH_SIZES,
    NotApplicableError,
    ParityTally,
    Runner,
    TensorSpec,
    check_parity,
    draw_inputs,
    has_dynamic_batch,
    probe_int_high,
    specs_from_signature,
)
from registry.conversion.profiling import DEFAULT_BUDGET_S, profile, profile_batch_sizes
from registry.conversion.protocol_costs import protocol_costs
from registry.conversion.torch_sources import prepare_program, prepare_torchscript
from registry.conversion.warmup import check_warm_up

FORMATS = ("torchscript", "torch_export", "onnx")
EXPORTERS = {"torchscript": "torchscript", "torch_export": "dynamo", "onnx": "none (uploaded ONNX)"}


@dataclass(frozen=True)
class ConversionRequest:
    """The parent's request, validated. For ONNX uploads the graph's own signature is used."""

    format: str
    source_path: str
    output_path: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    atol: float
    rtol: float
    parity_batch_sizes: tuple[int, ...]
    profile_max_batch: int
    profile_runs: int
    threads: int
    opset: int | None
    seed: int
    profile_budget_s: float

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ConversionRequest:
        try:
            request = cls(
                format=str(raw["format"]),
                source_path=str(raw["source_path"]),
                output_path=str(raw["output_path"]),
                inputs=specs_from_signature(raw["signature"], "inputs"),
                outputs=specs_from_signature(raw["signature"], "outputs"),
                atol=float(raw["atol"]),
                rtol=float(raw["rtol"]),
                parity_batch_sizes=tuple(
                    int(b) for b in raw.get("parity_batch_sizes") or DEFAULT_BATCH_SIZES
                ),
                profile_max_batch=int(raw.get("profile_max_batch", 16)),
                profile_runs=int(raw.get("profile_runs", 10)),
                threads=max(int(raw.get("threads", 1)), 1),
                opset=int(raw["opset"]) if raw.get("opset") is not None else None,
                seed=int(raw.get("seed", 0)),
                profile_budget_s=float(raw.get("profile_budget_s", DEFAULT_BUDGET_S)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChildError(
                f"invalid conversion request: {type(exc).__name__}: {exc}", "invalid_request"
            ) from None
        if request.format not in FORMATS:
            raise ChildError(
                f"invalid conversion request: unknown format {request.format!r}", "invalid_request"
            )
        if any(b < 1 for b in request.parity_batch_sizes):
            raise ChildError("invalid conversion request: batch sizes must be positive", "invalid_request")
        return request


@dataclass
class Source:
    """What the export stage hands on: the reference runner and the inputs to draw."""

    reference: Runner | None
    inputs: list[TensorSpec]
    batch_range: DimRange | None = None
    int_high: int = 100
    warnings: list[str] = field(default_factory=list)


def convert(request: dict[str, Any]) -> dict[str, Any]:
    """Convert ``request["source_path"]`` to a checked, parity-tested, profiled ONNX file."""
    req = ConversionRequest.from_dict(request)
    report: dict[str, Any] = {"exporter": EXPORTERS[req.format], "warnings": [], "durations_s": {}}
    try:
        signature = _convert(req, report)
    except ChildError as exc:
        exc.extra.setdefault("report", report)
        raise
    except Exception as exc:
        raise_if_out_of_memory(exc, "converting")
        traceback.print_exc()
        raise ChildError(
            f"conversion failed unexpectedly: {type(exc).__name__}: {first_line(exc)}",
            "failed",
            extra={"report": report},
        ) from None
    progress("done")
    return {"signature": signature, "report": report}


@contextmanager
def _timed(report: dict[str, Any], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        report["durations_s"][stage] = round(time.perf_counter() - start, 3)


@contextmanager
def _torch_threads(req: ConversionRequest) -> Iterator[None]:
    """PyTorch's intra-op threads for the conversion, restored after (tests call ``convert`` in-process)."""
    if req.format == "onnx":  # no PyTorch involved: do not pay for importing it
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(req.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _convert(req: ConversionRequest, report: dict[str, Any]) -> dict[str, Any]:
    with _torch_threads(req):
        return _run_stages(req, report)


def _run_stages(req: ConversionRequest, report: dict[str, Any]) -> dict[str, Any]:
    with _timed(report, "export"):
        source = _export(req)
    report["warnings"].extend(source.warnings)
    progress("checking the ONNX graph")
    with _timed(report, "check"):
        checked = check_onnx_file(req.output_path, threads=req.threads)
    signature = onnx_signature(checked.model)
    inputs = source.inputs or specs_from_signature(signature, "inputs")
    report["warnings"].extend([*checked.warnings, *export_notes(checked, req.opset, inputs)])
    note = None
    if req.format == "onnx":
        runner = ort_runner(checked.session)
        source.int_high, _ = probe_int_high(
            runner, inputs, seed=req.seed, batch_size=1, label="ONNX Runtime", code="check_failed"
        )
        freed, note = free_fixed_batch(
            checked,
            req.output_path,
            inputs,
            threads=req.threads,
            int_high=source.int_high,
            seed=req.seed,
            tolerance=(req.atol, req.rtol),
        )
        if freed is not None:
            checked, signature = freed, onnx_signature(freed.model)
            inputs = specs_from_signature(signature, "inputs")
    report["warnings"].extend([n for n in [note or fixed_batch_note(req.format, inputs)] if n])
    report.update(
        opset=checked.opset,
        onnx_size=os.path.getsize(req.output_path),
        dynamic_batch=has_dynamic_batch(specs_from_signature(signature, "inputs")),
    )
    with _timed(report, "parity"):
        _parity(req, report, source, checked, inputs, [o["name"] for o in signature["outputs"]])
    sizes = _batch_sizes(req.parity_batch_sizes, inputs, source.batch_range, [])  # the ones parity ran
    why = report["dynamic_batch"] and mark_if_not_batched(
        checked, req.output_path, ort_runner(checked.session), inputs, source.int_high, sizes
    )
    if why:
        report.update(dynamic_batch=False, warnings=[*report["warnings"], why])
    with _timed(report, "warm-up"):
        report.update(
            check_warm_up(
                req.output_path, inputs, int_high=source.int_high, batch_sizes=req.parity_batch_sizes
            )
        )
    with _timed(report, "profile"):
        _profile(req, report, source, checked, inputs)
    return signature


def _export(req: ConversionRequest) -> Source:
    if req.format == "torchscript":
        prepared = prepare_torchscript(req.source_path, req.inputs, req.outputs, seed=req.seed)
        progress("exporting with the TorchScript-based exporter")
        notes = prepared.export(req.output_path, req.opset)
    elif req.format == "torch_export":
        prepared = prepare_program(req.source_path, req.inputs, req.outputs, seed=req.seed)
        progress("exporting with the torch.export-based exporter")
        notes = prepared.export(req.output_path, req.opset)
    else:
        progress("copying the ONNX upload")
        if os.path.abspath(req.source_path) != os.path.abspath(req.output_path):
            shutil.copyfile(req.source_path, req.output_path)
        return Source(reference=None, inputs=[])
    return Source(
        reference=prepared.runner,
        inputs=prepared.inputs,
        batch_range=prepared.batch_range,
        int_high=prepared.int_high,
        warnings=prepared.warnings + notes,
    )


def _fixed_batch(inputs: list[TensorSpec]) -> int:
    return next((s.shape[0] for s in inputs if s.shape and s.shape[0] != -1), 1)


def _batch_sizes(
    wanted: Sequence[int], inputs: list[TensorSpec], batch_range: DimRange | None, notes: list[str]
) -> list[int]:
    """Batch sizes to run: the fixed one without a dynamic batch axis, else those the model allows."""
    if not has_dynamic_batch(inputs):
        return [_fixed_batch(inputs)]
    allowed = [b for b in wanted if batch_range is None or batch_range.allows(b)]
    if len(allowed) < len(wanted):
        skipped = sorted(set(wanted) - set(allowed))
        notes.append(f"batch sizes {skipped} are outside the range the .pt2 program accepts; skipped")
    if not allowed and batch_range is not None:
        allowed = [batch_range.clamp(1)]
    return allowed


def _parity(
    req: ConversionRequest,
    report: dict[str, Any],
    source: Source,
    checked: CheckedModel,
    inputs: list[TensorSpec],
    output_names: list[str],
) -> None:
    wanted = sorted(set(req.parity_batch_sizes))
    batch_sizes = _batch_sizes(wanted, inputs, source.batch_range, report["warnings"])
    label = "PyTorch" if source.reference is not None else "onnx.reference"
    tally = ParityTally(atol=req.atol, rtol=req.rtol, reference=label)
    try:
        check_parity(
            inputs=inputs,
            output_names=output_names,
            batch_sizes=batch_sizes,
            reference=source.reference or onnx_reference(req.output_path, checked.model),
            candidate=ort_runner(checked.session),
            tally=tally,
            seed=req.seed,
            int_high=source.int_high,
        )
    except NotApplicableError as exc:
        report["parity"] = _not_applicable(req, str(exc))
        report["warnings"].append(f"parity {report['parity']['status']}")
        return
    except ChildError:
        report["parity"] = {**tally.report(batch_sizes), "passed": False, "status": "failed"}
        raise
    report["parity"] = tally.report(batch_sizes)
    report["parity"]["status"] = "passed" if tally.failure is None else "failed"
    report["parity"]["input_int_range"] = [0, source.int_high]
    if tally.failure is not None:
        raise ChildError(tally.failure_message(), "parity_failed")


def _not_applicable(req: ConversionRequest, reason: str) -> dict[str, Any]:
    return {
        "passed": None,
        "status": f"not applicable: {reason}",
        "reference": None,
        "atol": req.atol,
        "rtol": req.rtol,
        "batch_sizes": [],
        "outputs": {},
    }


def _profile(
    req: ConversionRequest,
    report: dict[str, Any],
    source: Source,
    checked: CheckedModel,
    inputs: list[TensorSpec],
) -> None:
    fixed = None if has_dynamic_batch(inputs) else _fixed_batch(inputs)
    wanted = profile_batch_sizes(req.profile_max_batch, fixed)
    sizes = _batch_sizes(wanted, inputs, source.batch_range, report["warnings"])
    session_run = ort_runner(checked.session)
    report["profile"], notes = profile(
        batch_sizes=sizes,
        draw=lambda b: draw_inputs(inputs, b, seed=req.seed + 1, int_high=source.int_high),
        onnxruntime=session_run,
        torch_run=source.reference,
        runs=req.profile_runs,
        threads=req.threads,
        budget_s=req.profile_budget_s,
    )
    report["warnings"].extend(notes)
    names = [o.name for o in checked.session.get_outputs()]
    _protocols(report, inputs, source, session_run, req.seed, names)


def _protocols(
    report: dict[str, Any],
    inputs: list[TensorSpec],
    source: Source,
    session_run: Runner,
    seed: int,
    names: list[str],
) -> None:
    """Codec cost per request of each protocol, for the serving advice."""
    progress("measuring protocol costs")
    fixed = None if has_dynamic_batch(inputs) else _fixed_batch(inputs)
    feeds = draw_inputs(inputs, fixed or 1, seed=seed + 2, int_high=source.int_high)
    try:
        outputs = session_run(feeds)
        report["protocols"] = protocol_costs(feeds, dict(zip(names, outputs, strict=False)))
    except Exception as exc:  # advice is optional: never fail a conversion over it
        report["warnings"].append(f"protocol costs not measured: {first_line(exc)}")
