"""Optional ONNX Runtime path for the cross-encoder: export once, optionally int8-quantise, cache.

Why: on CPU, ONNX Runtime's fused BERT kernels and int8 dynamic quantisation (VNNI/AMX) are several
times faster than eager PyTorch. The exported files are cached next to the model (`<model>/onnx/`), or
in `onnx_dir`, keyed by the weights' hash so a re-trained model never reuses a stale export.

The service scores with the int8 file (`ServingConfig.ce_backend`, "auto"): exporting and quantising take
~26 s on 2 cores, so `build_int8` runs offline, when the model is registered, and the file travels in the
model's artifact (ltr.tracking); a service start only loads it. The files are keyed by a hash of the
weights' bytes, not their modification times, so a downloaded artifact finds the export made before upload.

The export is torch's current exporter (`torch.onnx.export(..., dynamo=True)`: torch.export, then
onnxscript), which needs the `onnx` and `onnxscript` packages (declared dependencies, as is onnxruntime).
Two settings are deliberate:
- The model is exported with eager attention (a copy; the caller's model keeps its own). With
  `segment_own_cls` the layout inserts a [CLS], so the layers see sequences of length seq + 1, and with
  SDPA attention torch.export records the head merge after attention as a `view` that the ONNX
  decomposition then cannot apply ("Cannot view a tensor with shape [batch, seq + 1, 12, 32] and strides
  ... as a tensor with shape (batch, seq + 1, 384)"). The eager attention's explicit matmuls export for
  every head, and SDPA has no ONNX op at this opset anyway, so the graph computes the same thing.
- The exporter's graph optimiser stays on: without it the Linear weights reach MatMul through a
  Transpose, and `quantize_dynamic` leaves them in fp32 (the int8 file would be fp32 under another name).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import warnings
from pathlib import Path

import torch


def _weights_hash(model_dir: Path) -> str:
    """By content (~0.2 s for 90 MB): copies of the same weights (an MLflow download) share their export.
    Remembered per file state, so a service start that asks twice reads the weights once."""
    files = sorted(n for n in os.listdir(model_dir) if n.endswith((".safetensors", ".bin")))
    state = tuple((n, (st := (Path(model_dir) / n).stat()).st_size, st.st_mtime_ns, st.st_ino) for n in files)
    return _content_hash(str(Path(model_dir).resolve()), state)


@functools.lru_cache(maxsize=64)
def _content_hash(model_dir: str, state: tuple) -> str:
    h = hashlib.sha1()
    for name, *_ in state:
        h.update(name.encode() + b"\0")
        with open(Path(model_dir) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def export_onnx(model, out_path: Path, output_name: str = "logits") -> Path:
    """Export a BERT-style model (the cross-encoder's classifier, or the bi-encoder's encoder with
    `output_name="last_hidden_state"`) with dynamic batch and sequence axes (atomic write)."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter builds the graph with it)
    except ImportError as e:  # pragma: no cover
        raise ImportError("the ONNX export needs onnxscript. Fix: `pip install onnx onnxscript`.") from e
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones((2, 16), dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    model = copy.deepcopy(model).eval()
    if hasattr(model, "set_attn_implementation"):  # see the module docstring
        model.set_attn_implementation("eager")
    with warnings.catch_warnings():  # torch-internal notes, not problems: the inputs share their axes, and a
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # pytree deprecation
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(model, args, input_names=names, output_names=[output_name],
                                    dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                                    opset_version=18, dynamo=True, verbose=False)
    program.save(str(tmp), external_data=False)  # one file (< 2 GB), so the rename below is atomic
    os.replace(tmp, out_path)
    return out_path


def quantize_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic int8 quantisation of the MatMul weights (activations quantised on the fly), one scale per
    output channel: on the fine-tuned cross-encoder and the 4,135 ESCI pairs, Spearman vs fp32 rose from
    0.970 (one scale per tensor) to 0.995 at the same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = out_path.with_suffix(".tmp.onnx")
    quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     per_channel=True)
    os.replace(tmp, out_path)
    return out_path


def onnx_paths(model_dir: str | Path, onnx_dir: str | Path | None = None) -> tuple[Path, Path]:
    model_dir = Path(model_dir)
    base = Path(onnx_dir) if onnx_dir else model_dir / "onnx"
    tag = _weights_hash(model_dir)
    return base / f"model-{tag}.onnx", base / f"model-{tag}-int8pc.onnx"  # pc: per-channel (older: per-tensor)


def int8_export(model_dir: str | Path) -> Path | None:
    """The int8 file exported for the weights now in `model_dir` (its own `onnx/` folder), or None."""
    p = onnx_paths(model_dir)[1]
    return p if p.exists() else None


def ensure_export(model_dir: str | Path, model=None, quantize: bool = False,
                  onnx_dir: str | Path | None = None) -> Path:
    """The export of the weights in `model_dir` (int8 when `quantize`), made if absent. An fp32 file made only
    to quantise from is removed again (90 MB nobody loads). `model`: the loaded torch model (default: loaded
    from `model_dir`)."""
    fp32, int8 = onnx_paths(model_dir, onnx_dir)
    want = int8 if quantize else fp32
    if want.exists():
        return want
    if model is None:
        from .artifact import load_scoring_model
        model = load_scoring_model(Path(model_dir))
    try:
        had_fp32 = fp32.exists()
        if not had_fp32:
            export_onnx(model, fp32)
        if quantize:
            quantize_int8(fp32, int8)
            if not had_fp32:
                fp32.unlink()
    except PermissionError as e:
        raise PermissionError(f"cannot write the ONNX export under {fp32.parent}. Fix: pass onnx_dir= a "
                              "writable directory.") from e
    return want


def build_int8(model_dir: str | Path, model=None) -> Path:
    """Export and quantise offline (at registration), into `model_dir/onnx/`: the file serving loads."""
    return ensure_export(model_dir, model, quantize=True)


def ort_session(model_dir: str | Path, model, quantize: bool = False, onnx_dir: str | Path | None = None,
                num_threads: int = 2):
    """An onnxruntime InferenceSession for the model in `model_dir`, exporting on first use."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover
        raise ImportError("backend onnx needs onnxruntime. Fix: `pip install onnxruntime onnx onnxscript`.") from e
    path = ensure_export(model_dir, model, quantize, onnx_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(num_threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


__all__ = ["build_int8", "ensure_export", "export_onnx", "int8_export", "onnx_paths", "ort_session", "quantize_int8"]
