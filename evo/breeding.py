"""Which operator makes the next child, and (with an LLM) making children ahead of need.

The DEAP toolbox holds every operator: `mutate`/`mate` (knobs, offline) and, when `[llm]`
configures models, `llm_mutate`/`llm_mate`. A child is made by an LLM operator with
probability `llm.share` while the LLM budget lasts, else by a knob operator.

LLM proposals take seconds to minutes, so with an LLM the children are proposed in
background threads, one per slot, before a slot frees up: a free slot starts a ready child.
"""
from __future__ import annotations

import json
import random
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from deap import base, tools

from evo.operators.knobs import KnobCrossover, KnobMutation


def llm_settings_to_store(llm) -> dict:
    """The validated [llm] table as plain data for the journal (variable names, never keys)."""
    return {k: v for k, v in llm.to_dict().items() if v is not None}


class Breeder:
    """Owns the operators and the LLM client; `propose_fn(index)` makes one child or returns None."""

    def __init__(self, config, run_dir: Path, journal, context, n_slots: int, propose_fn, note=print):
        self.config, self.journal, self.propose_fn, self.note = config, journal, propose_fn, note
        self.toolbox = base.Toolbox()
        self.toolbox.register("select", tools.selTournament, tournsize=config.tournament_size)
        self.toolbox.register("mutate", KnobMutation())
        self.toolbox.register("mate", KnobCrossover())
        self.llm = self.client = None
        self.proposals: list[Future] = []
        self.executor: ThreadPoolExecutor | None = None
        self.n_slots = n_slots
        self._budget_noted = False
        if config.llm:
            self._start_llm(run_dir, context)

    def _start_llm(self, run_dir: Path, context) -> None:
        from evo.llm import LLMClient, LLMConfig, LLMCrossover, LLMMutation, PromptBook

        self.llm = LLMConfig.from_dict(self.config.llm)
        if not self.llm.enabled:
            self.llm = None
            return
        self.llm.check_keys()
        prompts = PromptBook.from_config(self.llm)
        self.client = LLMClient(self.llm, run_dir, self.journal.record_llm_call,
                                random.Random(f"{self.config.seed}:llm"))
        self.client.restore(json.loads(r["data"]) for r in self.journal.db.execute("SELECT data FROM llm_calls"))
        self.toolbox.register("llm_mutate", LLMMutation(self.client, context, prompts))
        self.toolbox.register("llm_mate", LLMCrossover(self.client, context, prompts))
        self.prompts = prompts
        self.executor = ThreadPoolExecutor(max_workers=max(1, self.n_slots), thread_name_prefix="propose")

    def choose_operator(self, rng: random.Random, members: int):
        """LLM (while its budget lasts) with probability llm.share, else knobs; crossover needs two members.
        Returns the operator itself (toolbox entries are functools.partial wrappers)."""
        if self.llm and not self.client.budget_exhausted and rng.random() < self.llm.share:
            crossover = members >= 2 and rng.random() < self.llm.crossover_rate
            return (self.toolbox.llm_mate if crossover else self.toolbox.llm_mutate).func
        if self.llm and self.client.budget_exhausted and not self._budget_noted:
            self._budget_noted = True
            self.journal.event("llm_budget_exhausted", spent_usd=self.client.spent_usd)
            self.note(f"LLM budget of ${self.llm.budget_usd:g} reached: continuing with knob operators only")
        if members >= 2 and rng.random() < self.config.crossover_rate:
            return self.toolbox.mate.func
        return self.toolbox.mutate.func

    def next_child(self, next_index):
        """A proposed child (or None on failure). Without an LLM: made now, from the population as it
        stands. With one: taken from the proposals running ahead, which are topped up to one per slot."""
        if self.executor is None:
            return self.propose_fn(next_index())
        while len(self.proposals) < self.n_slots:
            self.proposals.append(self.executor.submit(self.propose_fn, next_index()))
        wait(self.proposals, return_when=FIRST_COMPLETED)
        future = next(f for f in self.proposals if f.done())
        self.proposals.remove(future)
        return future.result()

    def reward(self, genome_id: str, parent_mean: float | None, val_bpb: float | None) -> None:
        """Bandit feedback for the model that wrote this child: improvement over its parent (0 if none)."""
        origin = self.client.origin_of(genome_id) if self.client else None
        if origin:
            gain = (parent_mean - val_bpb) if (parent_mean is not None and val_bpb is not None) else 0.0
            self.client.reward(origin["model"], max(0.0, gain))

    def maybe_summarize(self, done: int, history_rows) -> None:
        """Every llm.summary_every evaluations, the model writes the run-memory note (in the background)."""
        if not self.client or not self.llm.summary_every or done % self.llm.summary_every:
            return
        from evo.genome import OperatorFailure
        from evo.llm import summarize

        def write_note():
            try:
                self.journal.add_memory(summarize(self.client, history_rows, previous=self.journal.latest_memory(),
                                                  prompts=self.prompts))
            except OperatorFailure as exc:
                self.journal.event("memory_failed", reason=str(exc)[:500])

        self.executor.submit(write_note)

    def close(self) -> None:
        if self.executor:
            for f in self.proposals:
                f.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.client:
            self.client.close()
