from django.db import models


class ArtifactFormat(models.TextChoices):
    ONNX = "onnx", "ONNX"
    TENSORRT_PLAN = "tensorrt_plan", "TensorRT plan"
    PYTHON = "python", "Python backend"
    ENSEMBLE = "ensemble", "Ensemble"
    # A generative model: a Hugging Face folder (config, safetensors, tokenizer, chat template)
    # served on vLLM (catalog/generative.py, catalog/vllm_runner.py).
    VLLM = "vllm", "vLLM (Hugging Face folder)"


class ChangeKind(models.TextChoices):
    """What a version changed relative to its parent (lineage)."""

    INITIAL = "initial", "First version"
    NEW_WEIGHTS = "new_weights", "New weights"
    RE_EXPORT = "re_export", "Re-export of the same weights"
    QUANTISATION = "quantisation", "Quantisation"
    CONFIG = "config", "Serving change only"


# Triton data types (model_config.proto TYPE_* without the prefix, as the
# KServe v2 protocol spells them).
TRITON_DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)  # fmt: skip
