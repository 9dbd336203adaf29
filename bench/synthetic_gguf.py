"""Write a GGUF with a real tokenizer and synthetic Q4_K weights, for throughput benchmarks.

No large model can be downloaded where the benchmarks run, and decode speed depends on the
shapes and the quantization type, not on the values of the weights. This writes a Llama
architecture model of the chosen shape whose weights are random Q4_K blocks with small,
finite scales (so activations stay finite through every layer), and copies the tokenizer
and chat template from an existing GGUF (the default model's), so prompts tokenize to
realistic lengths and the chat format is the product's.

    python bench/synthetic_gguf.py OUT.gguf [--shape 7b|tiny] [--tokenizer-from MODEL.gguf]
    python bench/synthetic_gguf.py TOKENIZER.gguf --tokenizer-only  # a few MB to carry

Shapes: `7b` is Mistral-7B's (hidden 4096, 32 layers, 32 query and 8 key/value heads,
feed-forward 14336) with the donor's vocabulary, about 7.3 B parameters and 4.1 GB;
`tiny` is a two-layer model of a few MB for tests.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DONOR = BASE_DIR / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit quants.
Q4_K_WEIGHTS_PER_BLOCK = 256
Q4_K_BLOCK_BYTES = 144
# w = d * scale * q - dmin * min with 6-bit scale/min and 4-bit q: these keep |w| below ~0.1
# and its mean near zero, the order of a trained model's weights.
Q4_K_D = 1e-4
Q4_K_DMIN = 7.5e-4
POOL_BLOCKS = 1 << 16  # 9 MB of random blocks, repeated to fill each tensor


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int = 4096
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    "7b": Shape(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336),
    "tiny": Shape(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512),
}


def _block_pool(seed: int) -> np.ndarray:
    """Random Q4_K blocks with fixed finite scales: random bytes there could be NaN or huge."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(POOL_BLOCKS, Q4_K_BLOCK_BYTES), dtype=np.uint8)
    pool[:, 0:2] = np.frombuffer(np.float16(Q4_K_D).tobytes(), dtype=np.uint8)
    pool[:, 2:4] = np.frombuffer(np.float16(Q4_K_DMIN).tobytes(), dtype=np.uint8)
    return pool.reshape(-1)


def _tokenizer_fields(donor: GGUFReader) -> list[tuple[str, object, GGUFValueType, object]]:
    """The donor's tokenizer.* key/values, with their GGUF types, ready to write again."""
    copied = []
    for key, field in donor.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        copied.append((key, field.contents(), vtype, sub_type))
    return copied


def _vocab_size(donor: GGUFReader) -> int:
    return len(donor.fields["tokenizer.ggml.tokens"].data)


def _tensor_layout(shape: Shape, vocab: int) -> list[tuple[str, tuple[int, int] | int]]:
    """(name, (rows, columns)) for Q4_K matrices, (name, length) for f32 norm vectors."""
    kv = shape.kv_heads * shape.head_dim
    layout: list[tuple[str, tuple[int, int] | int]] = [("token_embd.weight", (vocab, shape.hidden))]
    for layer in range(shape.layers):
        block = f"blk.{layer}"
        layout += [
            (f"{block}.attn_norm.weight", shape.hidden),
            (f"{block}.attn_q.weight", (shape.hidden, shape.hidden)),
            (f"{block}.attn_k.weight", (kv, shape.hidden)),
            (f"{block}.attn_v.weight", (kv, shape.hidden)),
            (f"{block}.attn_output.weight", (shape.hidden, shape.hidden)),
            (f"{block}.ffn_norm.weight", shape.hidden),
            (f"{block}.ffn_gate.weight", (shape.ffn, shape.hidden)),
            (f"{block}.ffn_up.weight", (shape.ffn, shape.hidden)),
            (f"{block}.ffn_down.weight", (shape.hidden, shape.ffn)),
        ]
    layout += [("output_norm.weight", shape.hidden), ("output.weight", (vocab, shape.hidden))]
    return layout


def synthetic_gguf_write(*, out: Path, shape: Shape, donor_path: Path, seed: int = 0) -> int:
    """Write the model to `out` one tensor at a time (memory stays at one tensor); returns bytes."""
    donor = GGUFReader(donor_path)
    vocab = _vocab_size(donor)
    for dimension in (shape.hidden, shape.ffn):
        if dimension % Q4_K_WEIGHTS_PER_BLOCK:
            raise ValueError(f"{dimension} is not a multiple of {Q4_K_WEIGHTS_PER_BLOCK}")
    writer = GGUFWriter(out, "llama")
    writer.add_name(f"synthetic llama {shape.hidden}x{shape.layers}")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    writer.add_vocab_size(vocab)
    writer.add_file_type(14)  # LLAMA_FTYPE_MOSTLY_Q4_K_S: every matrix is Q4_K
    for key, value, vtype, sub_type in _tokenizer_fields(donor):
        writer.add_key_value(key, value, vtype, sub_type)

    layout = _tensor_layout(shape, vocab)
    for name, dims in layout:
        if isinstance(dims, int):
            writer.add_tensor_info(name, (dims,), np.dtype(np.float32), dims * 4)
        else:
            rows, columns = dims
            byte_shape = (rows, columns // Q4_K_WEIGHTS_PER_BLOCK * Q4_K_BLOCK_BYTES)
            writer.add_tensor_info(
                name,
                byte_shape,
                np.dtype(np.uint8),
                byte_shape[0] * byte_shape[1],
                raw_dtype=GGMLQuantizationType.Q4_K,
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pool = _block_pool(seed)
    for index, (_name, dims) in enumerate(layout):
        if isinstance(dims, int):
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
            continue
        rows, columns = dims
        size = rows * columns // Q4_K_WEIGHTS_PER_BLOCK * Q4_K_BLOCK_BYTES
        # Start each tensor at another block of the pool so tensors differ from each other.
        start = (index * 7919 % POOL_BLOCKS) * Q4_K_BLOCK_BYTES
        data = np.resize(np.roll(pool, -start), size).reshape(rows, -1)
        writer.write_tensor_data(data)
    writer.close()
    return out.stat().st_size


def tokenizer_gguf_write(*, out: Path, donor_path: Path) -> int:
    """A GGUF holding only the donor's tokenizer: a small stand-in donor to carry elsewhere."""
    donor = GGUFReader(donor_path)
    writer = GGUFWriter(out, "llama")
    for key, value, vtype, sub_type in _tokenizer_fields(donor):
        writer.add_key_value(key, value, vtype, sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--tokenizer-from", type=Path, default=DEFAULT_DONOR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer-only", action="store_true", help="write only the donor's tokenizer"
    )
    args = parser.parse_args(argv)
    if args.tokenizer_only:
        size = tokenizer_gguf_write(out=args.out, donor_path=args.tokenizer_from)
        print(f"{args.out}: tokenizer only, {size / 1e6:.1f} MB")
        return 0
    size = synthetic_gguf_write(
        out=args.out, shape=SHAPES[args.shape], donor_path=args.tokenizer_from, seed=args.seed
    )
    print(f"{args.out}: {size / 1e9:.2f} GB, shape {args.shape} {SHAPES[args.shape]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
