"""bench/synthetic_gguf.py writes a model llama.cpp loads, with the donor's tokenizer, that runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType, GGUFReader

from apps.inference.engine.base import ChatRequest, ModelSpec, SamplingParams
from apps.inference.engine.batching import BatchingEngine
from apps.inference.engine.llama import LlamaEngine
from bench.synthetic_gguf import SHAPES, synthetic_gguf_write

REPO = Path(__file__).resolve().parent.parent
DONOR = Path(
    os.environ.get(
        "WECOM_AI_MODEL_PATH", REPO / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
)
MESSAGES = (
    {"role": "system", "content": "You are the assistant of an enterprise chat platform."},
    {"role": "user", "content": "请详细介绍一下如何做好产品发布。"},
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "tiny.gguf"
    synthetic_gguf_write(out=out, shape=SHAPES["tiny"], donor_path=DONOR)
    return out


def test_the_file_has_the_shape_asked_for_in_q4_k(tiny_model: Path) -> None:
    reader = GGUFReader(tiny_model)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    shape = SHAPES["tiny"]

    assert len(tensors) == 2 + 9 * shape.layers + 1
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == GGMLQuantizationType.Q4_K
    assert [int(n) for n in q.shape] == [shape.hidden, shape.hidden]
    k = tensors["blk.1.attn_k.weight"]
    assert [int(n) for n in k.shape] == [shape.hidden, shape.kv_heads * shape.head_dim]
    assert tensors["output_norm.weight"].tensor_type == GGMLQuantizationType.F32


def test_prompts_tokenize_exactly_as_with_the_donor(tiny_model: Path) -> None:
    text = "员工报销差旅费需要哪些材料？ Travel expenses: receipts within 30 days."
    with LlamaEngine(ModelSpec(path=str(DONOR), n_ctx=256)) as donor:
        expected = donor.count_tokens(text)
    with LlamaEngine(ModelSpec(path=str(tiny_model), n_ctx=256)) as synthetic:
        assert synthetic.count_tokens(text) == expected


def test_it_generates_the_full_budget_and_batching_matches_one_at_a_time(
    tiny_model: Path,
) -> None:
    # Finite activations through every layer: NaN logits would make greedy decoding pick
    # token 0, the end-of-text token, and every answer would stop after one token.
    spec = ModelSpec(path=str(tiny_model), n_ctx=256)
    request = ChatRequest(
        messages=MESSAGES, sampling=SamplingParams(temperature=0.0, max_tokens=24, seed=0)
    )
    with LlamaEngine(spec) as single:
        generation = single.submit(request)
        reference = "".join(generation)
    assert generation.stats.completion_tokens == 24
    assert generation.stats.finish_reason == "length"
    with BatchingEngine(spec, slots=3, prefix_cache_size=1) as batching:
        generations = [batching.submit(request) for _ in range(3)]
        assert ["".join(g) for g in generations] == [reference] * 3


def test_a_tokenizer_only_donor_writes_the_same_model(tiny_model: Path, tmp_path: Path) -> None:
    from bench.synthetic_gguf import tokenizer_gguf_write

    tokenizer = tmp_path / "tokenizer.gguf"
    tokenizer_gguf_write(out=tokenizer, donor_path=DONOR)
    again = tmp_path / "again.gguf"
    synthetic_gguf_write(out=again, shape=SHAPES["tiny"], donor_path=tokenizer)

    assert tokenizer.stat().st_size < DONOR.stat().st_size / 20
    assert again.read_bytes() == tiny_model.read_bytes()
