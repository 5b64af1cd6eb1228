"""Export a multi-exit network to ONNX, one graph per node, and check it against torch.

Each node's graph is segment K followed by exit K (:class:`NodeGraph`), exported with torch's ONNX
exporter (``torch.export``-based by default) with a dynamic batch axis, stamped with metadata (node, variant,
checkpoint hash) and checked with ``onnx.checker``. Node 1 reads ``input`` (the normalised image;
normalisation stays outside the graph and is recorded in the manifest); node K > 1 reads node K-1's
``features`` under the same input name. Outputs: ``features`` (hop tensor, all nodes but the last),
``logits``, ``exit_features``.

:func:`export_checkpoint` also runs the torch model and the ONNX chain on a test split and records,
per exit, the largest logit difference and the argmax agreement; with ``quantize="int8"`` it writes
int8 files as well (:mod:`distree.backends.quantize`) and records per-exit accuracy fp32 vs int8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import MultiExitNetwork
from .base import BackendError, run_chain
from .manifest import (
    INPUT,
    MANIFEST,
    META_PREFIX,
    Manifest,
    NodeEntry,
    TensorSpec,
    checkpoint_sha256,
    output_names,
    sha256_file,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the lowest opset torch's exporter writes natively; ONNX Runtime >= 1.14 reads it
FORMATS = ("onnx",)
EXPORTERS = ("dynamo", "torchscript")


class ExportError(BackendError):
    """An export could not be made or does not match the torch model."""


class NodeGraph(nn.Module):
    """What one node computes: ``segment`` then ``exit_head``; ``(h, logits, feats)`` or ``(logits, feats)``."""

    def __init__(self, segment: nn.Module, exit_head: nn.Module, last: bool) -> None:
        super().__init__()
        self.segment = segment
        self.exit_head = exit_head
        self.last = last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.segment(x)
        logits, feats = self.exit_head(h)
        return (logits, feats) if self.last else (h, logits, feats)


def node_file(index: int, variant: str) -> str:
    return f"node{index + 1}.onnx" if variant == "fp32" else f"node{index + 1}.{variant}.onnx"


def in_shapes(model: MultiExitNetwork) -> list[tuple[int, ...]]:
    cost = model.cost_profile()
    return [tuple(model.input_shape)] + [tuple(int(s) for s in sh) for sh in cost.hop_shapes]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """torch's exporter prints progress and warns about optional packages; keep that out of the CLI output."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
        if buf.getvalue().strip():
            log.debug("torch.onnx output:\n%s", buf.getvalue())


def stamp(path: Path, props: dict[str, str | int]) -> None:
    """Set distree's metadata_props on an ONNX file (keeps the others) and check the file."""
    import onnx

    m = onnx.load(str(path))
    keep = [p for p in m.metadata_props if not p.key.startswith(META_PREFIX)]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, str(v)
    onnx.save(m, str(path))
    check_onnx(path)


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejects {path}: {e}") from e


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else "batch" for d in t.shape.dim]
        return TensorSpec(v.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    return [spec(v) for v in m.graph.input], [spec(v) for v in m.graph.output]


def export_node(
    model: MultiExitNetwork, index: int, path: Path, *, opset: int = DEFAULT_OPSET, exporter: str = "dynamo"
) -> None:
    """Write node ``index``'s graph (fp32, dynamic batch axis) to ``path``.

    ``exporter``: ``dynamo`` (torch's ``torch.export``-based exporter, the default) or ``torchscript``
    (the older tracing exporter, deprecated by torch but much faster to run).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    last = index == model.num_nodes - 1
    graph = NodeGraph(model.segments[index], model.exits[index], last).eval()
    example = torch.zeros((2, *in_shapes(model)[index]), dtype=torch.float32)
    outputs = output_names(last)
    with _quiet_exporter(), torch.no_grad():
        try:
            if exporter == "torchscript":
                torch.onnx.export(
                    graph,
                    (example,),
                    str(path),
                    input_names=[INPUT],
                    output_names=outputs,
                    dynamic_axes={n: {0: "batch"} for n in [INPUT, *outputs]},
                    opset_version=opset,
                    dynamo=False,
                )
                return
            prog = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; re-raised with the node
            raise ExportError(f"torch.onnx.export failed for node {index + 1} ({type(e).__name__}: {e})") from e
        if prog is None:
            raise ExportError(f"torch.onnx.export returned no program for node {index + 1}")
        prog.save(str(path), external_data=False)


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from .. import __version__

    return {
        "distree": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def export_model(
    model: MultiExitNetwork,
    out: str | Path,
    *,
    checkpoint: dict[str, Any],
    classes: list[str],
    normalization: dict[str, list[float]],
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    calibration: np.ndarray | None = None,
    quant: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Export every node of ``model`` into folder ``out`` and write its manifest.

    ``checkpoint``: ``{"path", "sha256", "model", "model_args"}`` identifying the weights (the sha256
    is stamped into every file). ``calibration``: normalised training inputs (n, *input_shape); when
    given, int8 files are written too, with ``quant`` as the settings for
    :func:`distree.backends.quantize.quantize_chain`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an old manifest must not describe new files
    for old in out.glob("node*.onnx"):  # nor may files of an earlier export lie next to the new ones
        old.unlink()
    model.eval()
    sha = str(checkpoint["sha256"])
    entries: list[NodeEntry] = []
    for i in range(model.num_nodes):
        if progress is not None:
            progress(f"exporting node {i + 1}/{model.num_nodes}")
        path = out / node_file(i, "fp32")
        export_node(model, i, path, opset=opset, exporter=exporter)
        stamp(path, {"index": i, "variant": "fp32", "checkpoint_sha256": sha, "num_nodes": model.num_nodes})
        ins, outs = graph_io(path)
        want = output_names(i == model.num_nodes - 1)
        if [o.name for o in outs] != want or len(ins) != 1 or ins[0].shape[0] != "batch":
            raise ExportError(
                f"{path}: unexpected graph interface (inputs {[t.to_dict() for t in ins]}, outputs "
                f"{[o.name for o in outs]}); want one input with a dynamic batch axis and outputs {want}"
            )
        entries.append(NodeEntry(i, ins, outs, {"fp32": {"file": path.name, "sha256": sha256_file(path)}}))
    manifest = Manifest(
        root=out,
        checkpoint=dict(checkpoint),
        num_nodes=model.num_nodes,
        num_classes=model.num_classes,
        classes=list(classes),
        input_shape=list(model.input_shape),
        normalization={k: [float(x) for x in v] for k, v in normalization.items()},
        cost_profile=model.cost_profile().to_dict(),
        nodes=entries,
        opset=opset,
        versions={**versions(), "exporter": exporter},
    )
    if calibration is not None:
        from .quantize import quantize_chain

        settings = quantize_chain(manifest, calibration, progress=progress, **(quant or {}))
        manifest.int8 = {"settings": settings}
    manifest.save()
    return manifest


# ------------------------------------------------------------------------------------------ checks
@dataclass
class ChainOutputs:
    logits: np.ndarray  # (n, N, K)
    features: list[np.ndarray]  # N x (n, F_i)


def chain_outputs(backends: list[Any], x: np.ndarray, batch_size: int = 256) -> ChainOutputs:
    logits: list[np.ndarray] = []
    feats: list[list[np.ndarray]] = [[] for _ in backends]
    for s in range(0, len(x), batch_size):
        outs = run_chain(backends, np.ascontiguousarray(x[s : s + batch_size]))
        logits.append(np.stack([lg for lg, _ in outs], axis=1))
        for i, (_, f) in enumerate(outs):
            feats[i].append(f)
    return ChainOutputs(np.concatenate(logits), [np.concatenate(f) for f in feats])


def parity_stats(ref: ChainOutputs, got: ChainOutputs, labels: np.ndarray, atol: float) -> dict[str, Any]:
    """Per exit: max |Δlogit|, max |Δfeature|, argmax agreement, mismatches that are not near-ties."""
    n_nodes = ref.logits.shape[1]
    d_logit = np.abs(ref.logits - got.logits).max(axis=(0, 2))
    ref_pred, got_pred = ref.logits.argmax(-1), got.logits.argmax(-1)
    srt = np.sort(ref.logits, axis=-1)
    margin = srt[..., -1] - srt[..., -2]  # (n, N) torch's top-1 minus top-2 logit
    diff = ref_pred != got_pred
    # a flipped argmax where torch's top two logits are closer than the numerical error is a tie, not a bug
    real = diff & (margin > 2 * np.maximum(np.abs(ref.logits - got.logits).max(-1), atol))
    return {
        "samples": int(ref.logits.shape[0]),
        "max_abs_logit_diff": [float(v) for v in d_logit],
        "max_abs_feature_diff": [float(np.abs(a - b).max()) for a, b in zip(ref.features, got.features, strict=True)],
        "argmax_agreement": [float(v) for v in (~diff).mean(axis=0)],
        "argmax_mismatches": [int(v) for v in diff.sum(axis=0)],
        "argmax_mismatches_not_ties": [int(v) for v in real.sum(axis=0)],
        "accuracy_reference": [float((ref_pred[:, i] == labels).mean()) for i in range(n_nodes)],
        "accuracy": [float((got_pred[:, i] == labels).mean()) for i in range(n_nodes)],
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    data_dir: str | None = None,
    dataset: str | None = None,
    parity_split: str = "test",
    parity_limit: int | None = None,
    atol: float = 1e-3,
    calibration_samples: int = 512,
    quant_format: str = "qdq",
    calibration_method: str = "minmax",
    per_channel: bool = True,
    activation_type: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Export a checkpoint to ONNX (and int8), check parity with torch, record it all in the manifest.

    Raises :class:`ExportError` when the fp32 graphs disagree with torch: a logit differs by more than
    ``atol`` or an argmax flips where torch's top two logits are not a near-tie. The manifest is only
    written for an export that passed.
    """
    from ..checkpoint import load_checkpoint
    from ..data import iterate_batches
    from ..trace.record import checkpoint_split
    from .onnxrt import onnx_backends
    from .torch_backend import torch_backends

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; use int8 (or none)")
    model, side = load_checkpoint(checkpoint)
    ck = {
        "path": str(checkpoint),
        "sha256": checkpoint_sha256(checkpoint),
        "model": side.get("model"),
        "model_args": side.get("model_args", {}),
    }
    test = checkpoint_split(side, parity_split, data_dir=data_dir, dataset=dataset, checkpoint=checkpoint)
    if parity_limit is not None:
        test = test.subset(np.arange(min(parity_limit, len(test))))

    def arrays(ds: Any) -> np.ndarray:
        return np.concatenate([x.numpy() for x, _ in iterate_batches(ds, 512)]).astype(np.float32)

    calib = None
    quant: dict[str, Any] = {}
    if quantize == "int8":
        train = checkpoint_split(side, "train", data_dir=data_dir, dataset=dataset, checkpoint=checkpoint)
        if calibration_samples < 1:
            raise ValueError(f"calibration samples must be >= 1, got {calibration_samples}")
        idx = np.sort(np.random.default_rng(seed).permutation(len(train))[: min(calibration_samples, len(train))])
        calib = arrays(train.subset(idx))
        quant = {
            "quant_format": quant_format,
            "method": calibration_method,
            "per_channel": per_channel,
            "activation_type": activation_type,
        }
    out = Path(out)
    manifest = export_model(
        model,
        out,
        checkpoint=ck,
        classes=list(side.get("classes", [])),
        normalization=side.get("normalization") or {"mean": list(test.mean), "std": list(test.std)},
        opset=opset,
        exporter=exporter,
        calibration=calib,
        quant=quant,
        progress=progress,
    )
    if calib is not None:
        manifest.int8["settings"].update({"split": "train", "seed": seed})
    if progress is not None:
        progress(f"checking parity on {len(test)} {parity_split} samples")
    x, labels = arrays(test), test.labels.numpy()
    ref = chain_outputs(torch_backends(model), x)
    fp32 = chain_outputs(onnx_backends(out, variant="fp32", checkpoint=checkpoint), x)
    par = parity_stats(ref, fp32, labels, atol)
    par.update({"split": parity_split, "atol": atol, "reference": "torch"})
    bad = [
        i + 1
        for i in range(model.num_nodes)
        if par["max_abs_logit_diff"][i] > atol or par["argmax_mismatches_not_ties"][i] > 0
    ]
    if bad:
        (out / MANIFEST).unlink(missing_ok=True)
        raise ExportError(
            f"ONNX graphs in {out} disagree with torch at exits {bad}: max |Δlogit| {par['max_abs_logit_diff']}, "
            f"argmax mismatches {par['argmax_mismatches']} (not near-ties: {par['argmax_mismatches_not_ties']}), "
            f"tolerance {atol}. The manifest was not written; the files are kept for inspection"
        )
    manifest.parity = par
    if calib is not None:
        if progress is not None:
            progress("measuring int8 accuracy")
        q = parity_stats(fp32, chain_outputs(onnx_backends(out, variant="int8", checkpoint=checkpoint), x),
                         labels, atol)  # fmt: skip
        manifest.int8.update(
            {
                "split": parity_split,
                "samples": q["samples"],
                "accuracy_fp32": q["accuracy_reference"],
                "accuracy_int8": q["accuracy"],
                "argmax_agreement_with_fp32": q["argmax_agreement"],
                "max_abs_logit_diff_vs_fp32": q["max_abs_logit_diff"],
            }
        )
        drop = (q["accuracy_reference"][-1] - q["accuracy"][-1]) * 100
        if drop > 1.0:
            log.warning("int8 last-exit accuracy is %.2f pp below fp32 on %s", drop, parity_split)
    manifest.save()
    return manifest
