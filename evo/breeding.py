"""The breeder: selection plus operators. It reads the run state and never changes it.

The DEAP toolbox holds every operator under one calling convention,
`toolbox.<name>(parents, rng, context) -> Genome`: the knob operators `tpe` and `cmaes` (model-based,
over the parent structure's knob study), `mutate` / `mate` (random knob steps and knob crossover),
and, when `[llm]` configures models, `llm_mutate` / `llm_mate`. A child is made by an LLM operator
with probability `llm.share` while the LLM budget lasts, else by a knob operator, drawn with the
shares `tpe_share`, `cmaes_share` and `crossover_rate` (the rest: `mutate`); parents come from
`toolbox.select` (a tournament) over the population as it stands.

The knob study handed to an operator (`OperatorContext.study`) holds every scored or failed
configuration of the first parent's structure, built from the run state at proposal time: the
model-based operators keep no state of their own, so a resume replays them exactly.

Proposals are numbered; proposal k draws every random choice (operator, parents, knob steps,
which model answers) from its own stream `Random("<run seed>:child:<k>")`, and the LLM client's
other state (which model made which child, the bandit's rewards) is journaled as events, so a
resumed run proposes exactly what the uninterrupted run would have.

LLM proposals take seconds to minutes, so with an LLM the children are proposed in background
threads, one per slot, before a slot frees up: a free slot starts a ready child. With several slots
and knob operators only, one child is proposed ahead in the same way (a model-based ask takes up to
a second on the controller); with one slot each child is proposed when the slot frees, from every
result so far. A proposal reads the state under `RunState.lock`, which every fold holds.
"""
from __future__ import annotations

import random
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from operator import attrgetter
from pathlib import Path

from deap import base

from evo import fitness as fit
from evo.genome import Genome, OperatorContext, OperatorFailure, SlotFacts
from evo.journal import Evaluation, Journal
from evo.state import RunState, new_member
from gpt.result import SlotResult

ARITY = {"mutate": 1, "mate": 2, "tpe": 1, "gp": 1, "cmaes": 1, "llm_mutate": 1, "llm_mate": 2}


def select_tournament(individuals: list, k: int, rng: random.Random, tournsize: int) -> list:
    """DEAP's tournament (`tools.selTournament`: k times, the fittest of `tournsize` drawn at random),
    drawn from the proposal's own stream: DEAP's draws from the process-wide `random` module, whose
    state a resumed process does not share with the one that stopped."""
    return [max((rng.choice(individuals) for _ in range(tournsize)), key=attrgetter("fitness")) for _ in range(k)]


def slot_facts(run, slots) -> SlotFacts:
    """The regime the LLM operators are told about: budget, hardware, corpus (train split facts only)."""
    from gpt.dataset import Dataset
    from gpt.sources import parse_source

    manifest = Dataset(Path(run.dataset)).manifest
    tokenizer = manifest.get("tokenizer") or {}
    return SlotFacts(budget_s=run.config.budget_s, device=slots[0].device, threads=slots[0].threads,
                     slots=len(slots), corpus=parse_source(manifest["source"]).kind,
                     tokenizer=tokenizer.get("name", ""), vocab_size=tokenizer.get("vocab_size"),
                     train_tokens=manifest["tokens"]["train"], train_documents=manifest["documents"]["train"])


def price_warnings(llm) -> list[str]:
    """Models without prices make every cost read $0, so `budget_usd` can never stop the spending."""
    free = [m.model for m in llm.models if not (m.price_in_per_m or m.price_out_per_m)]
    if not free:
        return []
    text = (f"no prices for {', '.join(free)}: their calls are counted as $0"
            + (f", so llm.budget_usd = {llm.budget_usd:g} cannot stop them" if llm.budget_usd else "")
            + "; set price_in_per_m and price_out_per_m (US dollars per million tokens) in [[llm.models]]")
    return [text]


class Breeder:
    """Makes children from a read-only view of the run state."""

    def __init__(self, state: RunState, journal: Journal, run_dir: Path, n_slots: int = 1, note=print,
                 slot_facts: SlotFacts | None = None):
        self.state, self.journal, self.config, self.note = state, journal, state.config, note
        self.slot_facts = slot_facts
        self.toolbox = base.Toolbox()
        self.toolbox.register("select", select_tournament, tournsize=self.config.tournament_size)
        self.llm = None  # the LLM client, when [llm] configures models
        self.executor: ThreadPoolExecutor | None = None
        self.proposals: list[Future] = []
        self.n_slots = n_slots
        self._budget_noted = False
        # proposals journal their outcome: a child, a duplicate, or an operator failure
        self._index = (journal.count_purpose("child") + len(journal.events("duplicate"))
                       + len(journal.events("operator_failure")))
        self._shapes: dict[str, tuple | None] = {}  # genome id -> (structure, space, knob values)
        self._register_knob_operators()
        if self.config.llm.enabled:
            self._start_llm(run_dir)
        elif n_slots >= 2:  # results already come in out of order; the next child is made while slots train
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="propose")

    def _register_knob_operators(self) -> None:
        from evo.operators.knobs import KnobCrossover, KnobMutation
        from evo.operators.studies import CMAESSearch, GPSearch, TPESearch

        self.toolbox.register("mutate", KnobMutation())
        self.toolbox.register("mate", KnobCrossover())
        self.toolbox.register("tpe", TPESearch())
        self.toolbox.register("cmaes", CMAESSearch())
        self.toolbox.register("gp", GPSearch())

    def _start_llm(self, run_dir: Path) -> None:
        from evo.llm import LLMClient, LLMCrossover, LLMMutation, PromptBook

        llm = self.config.llm
        llm.check_keys()
        for warning in price_warnings(llm):
            self.note(f"warning: {warning}")
        self.prompts = PromptBook.from_config(llm)
        self.llm = LLMClient(llm, run_dir, self.journal.record_llm_call, random.Random(f"{self.config.seed}:llm"))
        self.llm.restore(self.journal.llm_calls())
        for e in self.journal.events("llm_origin"):
            self.llm.note_origin(e["genome_id"], model=e["model"], call_ids=tuple(e["call_ids"]),
                                 cost_usd=e["cost_usd"], idea=e.get("idea", ""))
        for e in self.journal.events("llm_reward"):  # every reward, also the client's own (a failed call)
            self.llm.reward(e["model"], e["gain"])
        self.llm.on_reward = lambda model, gain: self.journal.event("llm_reward", model=model, gain=gain)
        self.toolbox.register("llm_mutate", LLMMutation(self.llm, self.prompts))
        self.toolbox.register("llm_mate", LLMCrossover(self.llm, self.prompts))
        self.executor = ThreadPoolExecutor(max_workers=max(1, self.n_slots), thread_name_prefix="propose")

    # ------------------------------------------------------------ one proposal
    def choose_operator(self, rng: random.Random, members: int) -> str:
        """The toolbox name of the operator for this proposal: an LLM one (while its budget lasts) with
        probability llm.share, else knobs; crossover needs two members."""
        llm = self.config.llm
        if self.llm and not self.llm.budget_exhausted and rng.random() < llm.share:
            return "llm_mate" if members >= 2 and rng.random() < llm.crossover_rate else "llm_mutate"
        if self.llm and self.llm.budget_exhausted and not self._budget_noted:
            self._budget_noted = True
            self.journal.event("llm_budget_exhausted", spent_usd=self.llm.spent_usd)
            self.note(f"LLM budget of ${llm.budget_usd:g} reached: continuing with knob operators only")
        c, draw = self.config, rng.random()
        for name, share in (("gp", c.gp_share), ("tpe", c.tpe_share), ("cmaes", c.cmaes_share),
                            ("mate", c.crossover_rate if members >= 2 else 0.0)):
            if draw < share:
                return name
            draw -= share
        return "mutate"

    def context(self, parent_id: str | None = None) -> OperatorContext:
        """What operators may know of the run: public facts only, and the first parent's knob study."""
        rows = self.config.llm.history_rows if self.llm else 0
        return OperatorContext(noise_floor=self.state.floor, history=self.state.history(rows),
                               memory=self.journal.latest_memory(), slot=self.slot_facts,
                               study=self.study(parent_id) if parent_id else None)

    # ------------------------------------------------------------ knob studies
    def _shape(self, genome_id: str) -> tuple | None:
        """(structure id, knob space, knob values) of a genome, parsed once; None if it does not parse."""
        if genome_id not in self._shapes:
            from evo.operators.space import knob_space, structure_id

            source = self.journal.genome(genome_id).source
            try:
                space, values = knob_space(source)
                self._shapes[genome_id] = (structure_id(source), space, values)
            except Exception:  # noqa: BLE001 -- a genome that does not parse has no study
                self._shapes[genome_id] = None
        return self._shapes[genome_id]

    def study(self, genome_id: str):
        """The knob study of this genome's structure: every genome of the run with the same structure
        that has a score (mean val_bpb + penalty) or failed, in the order the run folded them."""
        from evo.operators.studies import Study, Trial

        shape = self._shape(genome_id)
        if shape is None:
            return None
        structure, space, _ = shape
        trials = []
        for gid, rec in self.state.records.items():
            other = self._shape(gid)
            if other is None or other[0] != structure or other[1].names != space.names:
                continue  # another structure, or the same code with other knobs searched
            if rec.fitness != fit.WORST_FITNESS:
                trials.append(Trial(gid, other[2], -rec.fitness, len(rec.vals), val_mean=rec.mean))
            elif rec.failed or rec.flagged:
                failure = rec.failed or f"flagged: {rec.flagged}"
                trials.append(Trial(gid, other[2], None, len(rec.vals), failure=failure))
        if not trials:  # nothing scored yet (the noise floor is still being measured): the genome itself
            trials.append(Trial(genome_id, shape[2], None, 0))
        return Study(structure, space, tuple(trials), noise_floor=self.state.floor)

    def propose(self, index: int) -> Genome | None:
        """Proposal `index`: select parents from the population as it stands and apply one operator."""
        rng = random.Random(f"{self.config.seed}:child:{index}")
        with self.state.lock:  # one consistent view: the scheduler may fold a result meanwhile
            population = list(self.state.population)
            name = self.choose_operator(rng, len(population))
            parents = self.toolbox.select(population, ARITY[name], rng) if population else []
            if not parents:  # no member yet (or every one flagged): the seed
                parents = [new_member(self.state.seed_ids[0], 0)] * ARITY[name]
            infos, context = [self.state.parent_info(p.genome_id) for p in parents], self.context(parents[0].genome_id)
        try:
            child = getattr(self.toolbox, name)(infos, rng, context)
        except OperatorFailure as exc:
            self.journal.event("operator_failure", operator=name, reason=str(exc)[:2000],
                               response=str(getattr(exc, "response", "") or "")[:20000])
            return None
        except Exception as exc:  # noqa: BLE001 -- a genome an LLM wrote can trip any operator: drop the child
            self.journal.event("operator_failure", operator=name, reason=f"{type(exc).__name__}: {exc}"[:2000],
                               response="")
            self.note(f"{name} failed on {parents[0].genome_id} ({type(exc).__name__}: {str(exc)[:200]}); "
                      "the child is dropped, the run goes on")
            return None
        origin = self.llm.origin_of(child.id) if self.llm else None
        if origin:
            self.journal.event("llm_origin", genome_id=child.id, model=origin["model"],
                               call_ids=list(origin["call_ids"]), cost_usd=origin["cost_usd"],
                               idea=origin.get("idea", ""))
        return child

    def next_child(self) -> Genome | None:
        """A proposed child (or None on failure). With one slot and no LLM: made now, from the population as
        it stands (a sequential search sees every result). With an LLM: taken from the proposals running
        ahead, topped up to one per slot. With knob operators on several slots: the one made ahead, and the
        next one is started at once, so a freed slot does not wait for a proposal."""
        if self.executor is None:
            return self.propose(self._next_index())
        while len(self.proposals) < (self.n_slots if self.llm else 1):
            self.proposals.append(self.executor.submit(self.propose, self._next_index()))
        wait(self.proposals, return_when=FIRST_COMPLETED)
        future = next(f for f in self.proposals if f.done())
        self.proposals.remove(future)
        if not self.llm:
            self.proposals.append(self.executor.submit(self.propose, self._next_index()))
        return future.result()

    def _next_index(self) -> int:
        self._index += 1
        return self._index - 1

    # ------------------------------------------------------------ feedback
    def child_evaluated(self, evaluation: Evaluation, result: SlotResult, done: int) -> None:
        """Bandit feedback for the model that wrote this child (its gain over its parent, journaled so a
        resume restores it), and every llm.summary_every evaluations a new run-memory note."""
        if not self.llm:
            return
        origin = self.llm.origin_of(evaluation.genome_id)
        if origin:
            genome = self.journal.genome(evaluation.genome_id)
            parent = self.state.records.get(genome.parents[0]) if genome.parents else None
            parent_mean = parent.mean if parent else None
            gain = (parent_mean - result.val_bpb) if parent_mean is not None and result.val_bpb is not None else 0.0
            self.llm.reward(origin["model"], gain)
        every = self.config.llm.summary_every
        if every and done % every == 0:
            self.executor.submit(self._write_memory, done, self.state.history(self.config.llm.history_rows))

    def _write_memory(self, done: int, history: tuple) -> None:
        """The run-memory note, written in the background; any failure is journaled and shown."""
        from evo.llm import summarize

        try:
            note = summarize(self.llm, list(history), previous=self.journal.latest_memory(), prompts=self.prompts,
                             rng=random.Random(f"{self.config.seed}:memory:{done}"))
            self.journal.add_memory(note)
        except Exception as exc:  # noqa: BLE001 -- a thread's error must not vanish
            self.journal.event("memory_failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            self.note(f"the run-memory note was not written: {type(exc).__name__}: {str(exc)[:200]}")

    def close(self) -> None:
        if self.executor:
            for f in self.proposals:
                f.cancel()
            # a knob proposal under way takes a second: let it end before the journal closes; an LLM call may not
            self.executor.shutdown(wait=not self.llm, cancel_futures=True)
        if self.llm:
            self.llm.close()
