"""Making a cheaper version of a model that still answers well enough (issue 15).

The modules here are pure: bytes of an ONNX model and NumPy arrays in, bytes and
numbers out, no database and no Django. The optimisation job (models, tasks) wraps
them; keeping the arithmetic apart lets it be tested in seconds and reused by a
management command or a benchmark alike.

- `validation_data`: the validation-set file an operator uploads, and its checks.
- `onnxrun`: running a model on the CPU with ONNX Runtime (outputs and speed).
- `metrics`: metric values from a model's outputs.
- `gate`: whether a candidate's values are close enough to its parent's.
- `quantise`: FP16, dynamic and static INT8 candidates, and automatic mixed precision.
"""
