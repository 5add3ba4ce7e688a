"""LLM operators: mutation (one parent) and crossover (two), plus the run-memory summary.

    op = LLMMutation(client)                   # name "llm_mutation", arity 1
    child = op([parent_info], rng, context)    # -> Genome, or raises OperatorFailure

`context` is the `OperatorContext` the breeder builds for this one child (history rows, the
latest run-memory note, the noise floor); None means an empty one. `rng` is the child's own
random stream: when the client has to choose a model it draws from it, so a resumed run makes
the same choices as an uninterrupted one.

One call asks the model for an idea, a rationale and SEARCH/REPLACE edits, or (mutation) a knob
proposal `KNOBS: NAME=value, ...` checked against the parent's typed knob space; the mutation
prompt shows the knob study of the parent's structure (best configurations with intervals, the
last trials, CMA-ES's mean and step sizes). An answer with neither is retried by the client like
any fault. Edits that do not apply, a result that
does not parse, or a result that is the same program get one repair round with the error
shown to the model; if that fails too the operator raises `EditFailure` (an OperatorFailure
carrying the response text). The child's `rationale` is the idea line, a newline, and the
short rationale; `client.origin_of(child.id)` says which model and calls made it.
"""
from __future__ import annotations

import random

from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo, genome_id
from evo.llm.client import InvalidAnswer, LLMClient
from evo.llm.edits import Answer, EditError, apply_edits, check_python, has_edit_blocks, parse_answer
from evo.llm.prompts import MEMORY_CHARS, PromptBook
from evo.operators.space import knob_space, write_values
from evo.operators.studies import study_text

EMPTY_CONTEXT = OperatorContext()


class EditFailure(OperatorFailure):
    """The model's edits could not be used, even after the repair round."""

    def __init__(self, message: str, *, response: str = "", model: str = "", call_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.response, self.model, self.call_ids = response, model, call_ids


def _need_edit_blocks(text: str) -> None:
    if not has_edit_blocks(text):
        raise InvalidAnswer("the answer has no '<<<<<<< SEARCH' edit block")


def _with_knobs(source: str, proposal: dict) -> str:
    """The parent with a knob proposal written in, checked against its typed knob space."""
    try:
        space, _ = knob_space(source)
        return write_values(source, space.check(proposal))[0]
    except Exception as exc:  # noqa: BLE001 -- a bad value, a bad annotation (UserError), an overflow ...
        raise EditError(f"the KNOBS proposal cannot be used: {exc}") from None


def _study_text(context: OperatorContext) -> str:
    study = context.study
    if study is None or not study.space.dimensions:
        return "(this script has no knobs to search: propose a code change)"
    return study_text(study)


class _LLMOperator:
    name = "llm"
    arity = 1

    def __init__(self, client: LLMClient, prompts: PromptBook | None = None):
        self.client = client
        self.prompts = prompts or PromptBook.from_config(client.config)

    def _messages(self, parents: list[ParentInfo], context: OperatorContext) -> list[dict]:
        raise NotImplementedError

    def _history(self, context: OperatorContext) -> list[dict]:
        return context.recent_history(self.client.config.history_rows)

    def _order(self, parents: list[ParentInfo]) -> list[ParentInfo]:
        return list(parents)

    def _child_source(self, text: str, parents: list[ParentInfo]) -> tuple[Answer, str]:
        """Parse and apply an answer to parents[0]; EditError says what is wrong."""
        answer = parse_answer(text)
        source = (_with_knobs(parents[0].genome.source, answer.knobs) if answer.knobs
                  else apply_edits(parents[0].genome.source, answer.edits))
        check_python(source)
        new_id = genome_id(source)
        if new_id == parents[0].genome.id:
            raise EditError("the edits leave the program unchanged (at most comments or formatting changed); "
                            "make a change that alters what the script does")
        if len(parents) > 1 and new_id == parents[1].genome.id:
            raise EditError("the result is identical to script B; combine the two instead of copying B")
        return answer, source

    def __call__(self, parents: list[ParentInfo], rng: random.Random,
                 context: OperatorContext | None = None) -> Genome:
        if len(parents) != self.arity:
            raise OperatorFailure(f"{self.name} needs {self.arity} parent(s), got {len(parents)}")
        parents = self._order(parents)
        messages = self._messages(parents, context if context is not None else EMPTY_CONTEXT)
        first = self.client.complete(messages, purpose=self.name, validate=_need_edit_blocks, rng=rng)
        calls, cost, final = list(first.call_ids), first.cost_usd, first
        try:
            answer, source = self._child_source(first.text, parents)
        except EditError as error:
            repair = messages + [{"role": "assistant", "content": first.text},
                                 {"role": "user", "content": self.prompts.repair(str(error))}]
            final = self.client.complete(repair, purpose=f"{self.name}:repair", validate=_need_edit_blocks,
                                         model=first.model)
            calls += final.call_ids
            cost += final.cost_usd
            try:
                answer, source = self._child_source(final.text, parents)
            except EditError as second:
                self.client.reward(first.model, 0.0)
                raise EditFailure(f"edits unusable after one repair round: {second}", response=final.text,
                                  model=first.model, call_ids=tuple(calls)) from None
        rationale = answer.idea + (f"\n{answer.rationale}" if answer.rationale else "")
        child = Genome(source=source, parents=tuple(p.genome.id for p in parents), operator=self.name,
                       rationale=rationale)
        self.client.note_origin(child.id, model=final.model, call_ids=tuple(calls), cost_usd=cost, idea=answer.idea)
        return child


class LLMMutation(_LLMOperator):
    """One parent: the model proposes one change to its script."""

    name = "llm_mutation"
    arity = 1

    def _messages(self, parents: list[ParentInfo], context: OperatorContext) -> list[dict]:
        return self.prompts.mutation(parents[0], self._history(context), context.memory, context.noise_floor,
                                     context.slot, study=_study_text(context))


class LLMCrossover(_LLMOperator):
    """Two parents: the model edits the better one to take what made the other good."""

    name = "llm_crossover"
    arity = 2

    def _order(self, parents: list[ParentInfo]) -> list[ParentInfo]:
        def key(p: ParentInfo):
            return (p.mean_val_bpb is None, p.mean_val_bpb if p.mean_val_bpb is not None else 0.0)

        return sorted(parents, key=key)  # stable: equal parents keep their order

    def _messages(self, parents: list[ParentInfo], context: OperatorContext) -> list[dict]:
        return self.prompts.crossover(parents[0], parents[1], self._history(context), context.memory,
                                      context.noise_floor, context.slot)


def summarize(client: LLMClient, history_rows: list[dict], previous: str | None = None,
              prompts: PromptBook | None = None, rng: random.Random | None = None) -> str:
    """The run-memory note ("what worked, what did not, what to try next") from history rows
    (keys child, operator, idea, delta_val_bpb, status) and the previous note. `rng` is the
    stream the model is chosen from (pass one derived from the run seed; the client's own when
    None). Raises LLMUnavailable / BudgetExhausted (OperatorFailure) like any call; the caller
    stores the note."""
    prompts = prompts or PromptBook.from_config(client.config)
    done = client.complete(prompts.summary(list(history_rows), previous), purpose="summary", rng=rng)
    return done.text.strip()[:MEMORY_CHARS]
