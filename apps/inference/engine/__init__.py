"""Local LLM inference around llama.cpp, free of Django so it can be reused and tested alone.

Importing this package does not load libllama; `LlamaEngine` lives in
`apps.inference.engine.llama` and is loaded by the registry on first use.
"""

from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    EngineLoad,
    EngineSpec,
    FinishReason,
    Generation,
    GenerationStats,
    ModelSpec,
    PromptTooLong,
    RemoteSpec,
    SamplingParams,
)
from apps.inference.engine.registry import (
    close_all,
    get_engine,
    loaded_specs,
    register_engine_factory,
)
from apps.inference.engine.think import ThinkSplitter

__all__ = [
    "ChatRequest",
    "Engine",
    "EngineError",
    "EngineLoad",
    "EngineSpec",
    "FinishReason",
    "Generation",
    "GenerationStats",
    "ModelSpec",
    "PromptTooLong",
    "RemoteSpec",
    "SamplingParams",
    "ThinkSplitter",
    "close_all",
    "get_engine",
    "loaded_specs",
    "register_engine_factory",
]
