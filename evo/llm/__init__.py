"""LLM operators for evo: config, a retrying and budgeted chat client, prompts, edits, operators.

Nothing here is imported unless a run configures `[llm]` or `--llm`; without them runs stay offline.
See docs/llm.md.
"""
from evo.llm.client import BudgetExhausted, Completion, InvalidAnswer, LLMClient, LLMUnavailable
from evo.llm_config import LLMConfig, ModelConfig
from evo.llm.edits import Answer, Edit, EditError, apply_edits, parse_answer
from evo.llm.operators import EditFailure, LLMCrossover, LLMMutation, summarize
from evo.llm.prompts import PromptBook

__all__ = [
    "Answer", "BudgetExhausted", "Completion", "Edit", "EditError", "EditFailure", "InvalidAnswer", "LLMClient",
    "LLMConfig", "LLMCrossover", "LLMMutation", "LLMUnavailable", "ModelConfig", "PromptBook", "apply_edits",
    "parse_answer", "summarize",
]
