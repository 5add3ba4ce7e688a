"""`evo status`: where a run stands, read from its journal (the replayed run state); it writes nothing.

    evo status RUN_DIR                    the best genomes, each with its state, and the run's progress
    evo status RUN_DIR --json             the same as one JSON object, for scripts (keys below)
    evo status RUN_DIR --watch [SECONDS]  redrawn every SECONDS (default 5) until Ctrl-C (exit 0); with
                                          --json, one JSON object per line. It only reads, so it can
                                          watch a run another process drives (the journal is SQLite in
                                          WAL mode: readers never block the writer)

A genome's state word:

    best             the incumbent: the seed until a child is crowned; `best (confirmed)` once one is
    confirmed        crowned once (a `new_best` event), since beaten by a later best
    candidate        its first evaluation beat the best by more than the noise floor; its re-evaluation is
                     queued, running or interrupted (in parentheses)
    not confirmed    a candidate whose re-evaluation did not bear it out (a `not_confirmed` event)
    flagged          a probe failed (reason in parentheses): never a parent, never the best
    failed           an evaluation failed (reason in parentheses): a failed child is never trusted again
    seed             a seed genome that is not the best
    evaluated        a child that did not beat the best by more than the floor

The footnote gives the crowning rule (evo/fitness.py `p_better` and `decide`) and the numbers that decided
for the latest candidate, replayed from the journal up to the re-evaluation that settled it. The held-out column is
Thresholdout's answer, not the held-out bpb: the val mean unless the held-out split disagrees by more
than the threshold (a reveal, which spends one unit of the Thresholdout budget).

Evaluations journaled as `running` while the process that drove the run is gone (`Run.controller_alive`
is False) are interrupted: `evo resume RUN_DIR` runs them again.

`--json` keys (stable; a value not known yet is null; bpb values are floats):

    run_dir           the run directory
    evaluations       {done, limit (null: no limit), running, queued, interrupted}; running evaluations
                      of a controller that is gone count as interrupted, not as running
    controller        {alive: true | false | null (it ran on another host: unknown from here), pid, host,
                      since (unix time)}
    noise_floor       the noise floor, bpb
    seed              {genome, mean_val_bpb, n_evals, interval}: the first seed genome
    best              {genome, mean_val_bpb, n_evals, interval, gain_over_seed (seed mean - best mean)};
                      interval: [lo, hi], the 95% interval of the mean on the pooled noise model
    genomes           the table's rows, highest fitness first (at most --top; --top 0: all):
                      {id, state (the word), detail (what the table shows in parentheses, else null),
                      fitness, mean_val_bpb, interval ([lo, hi]: 95%, t on the pooled noise model),
                      n_evals, heldout_thresholdout, operator, parent}
    latest_candidate  {genome, verdict: confirmed | not confirmed | pending | flagged | failed,
                      reeval: queued | running | interrupted | done, candidate and incumbent (each
                      {genome, mean_val_bpb, penalty, n_evals, interval: [lo, hi] at 95%}), floor,
                      floor_dof, difference ((incumbent mean + penalty) - (candidate mean + penalty)),
                      p_better (P(the candidate is truly better), t on the pooled noise model),
                      confidence (crowned once p_better reaches it), candidate_confidence (re-evaluated
                      from it), max_evals (given up after these), prior ([mean, variance] a child's
                      mean is shrunk toward, see RunState.children_prior; null for a seed)}
    thresholdout      {spent, budget}: reveals of the held-out split used, of the budget
    integrity         the integrity line; sealed: whether the eval data was sealed from genomes
    sandboxes         the sandbox levels the evaluations ran under
    flagged           {genome id: reason}
    llm               {calls, prompt_tokens, completion_tokens, cost_usd}
"""
from __future__ import annotations

import json
import math
import signal
import sqlite3
import sys
import time

from evo.fitness import interval
from evo.run import Run, open_run
from evo.state import GenomeRecord, RunState
from gpt.errors import UserError
from gpt.result import SlotResult

NON_TTY_WIDTH = 160
DEFAULT_WATCH_SECONDS = 5.0
def rule_text(c: dict) -> str:
    return (f"crowning rule: P(better) is the chance that a genome truly beats the best, from the difference of "
            f"their means (held-out penalty included) over floor·√(1/n_child + 1/n_best), on Student's t; a child "
            f"whose first evaluation gives P ≥ {c['candidate_confidence']:g} is a candidate and is evaluated again "
            f"with fresh harness seeds, one at a time, until P with the child's mean shrunk toward what the run's "
            f"children score (the luck that picks a candidate is no evidence) reaches {c['confidence']:g} and "
            f"crowns it, or the plain P < 0.5 or {c['max_evals']} evaluations give it up")


def cmd_status(args) -> int:
    if args.watch is not None:
        return watch(args.run_dir, args.watch, args.top, args.json)
    show(args.run_dir, args.top, args.json)
    return 0


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else NON_TTY_WIDTH)


def show(run_dir, top: int, as_json: bool, console=None) -> None:
    """One look at the run: the table and footer on `console`, or one JSON line on stdout."""
    run = open_run(run_dir, readonly=True)  # never writes: safe beside the process that drives the run
    try:
        state = RunState.replay(run.config, run.journal)[0]
        if as_json:
            print(json.dumps(status_dict(run, state, top)), flush=True)
        else:
            print_status(run, state, top, console=console)
    finally:
        run.journal.close()


def watch(run_dir, seconds: float, top: int, as_json: bool) -> int:
    """Redraw the status every `seconds` until Ctrl-C (exit 0). Each frame opens the run afresh and
    replays it; nothing is written."""
    from rich.text import Text

    if not seconds > 0:
        raise UserError(f"--watch needs a positive number of seconds, not {seconds:g}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even where SIGINT was ignored
    console, frames = _console(), 0
    try:
        while True:
            try:
                if as_json:
                    show(run_dir, top, True)
                else:
                    with console.capture() as frame:  # drawn whole, then swapped in: no flicker while it replays
                        console.print(Text(f"{time.strftime('%H:%M:%S')}: evo status, every {seconds:g} s; "
                                           "Ctrl-C stops", style="dim"))
                        show(run_dir, top, False, console)
                    console.clear()
                    console.file.write(frame.get())
                    console.file.flush()
            except (UserError, sqlite3.Error) as exc:
                if not frames:  # a wrong RUN_DIR is an error at once; a later hiccup is shown and retried
                    raise
                print(f"{time.strftime('%H:%M:%S')}: cannot read the run just now ({exc}); trying again",
                      file=sys.stderr, flush=True)
            frames += 1
            time.sleep(seconds)
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------- what the run knows, as data
def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _genome_numbers(state: RunState, gid: str | None) -> dict | None:
    rec = state.records.get(gid) if gid else None
    if rec is None:
        return None
    lo, hi = interval(rec.mean, len(rec.vals), state.floor, state.floor_dof)
    return {"genome": gid, "mean_val_bpb": rec.mean, "penalty": rec.penalty, "n_evals": len(rec.vals),
            "interval": [_finite(lo), _finite(hi)]}


def _reeval_states(run: Run, alive: bool | None) -> dict[str, str]:
    """Genome id -> state of its pending re-evaluation (queued, running, or interrupted)."""
    j = run.journal
    states = {e.genome_id: "queued" for e in j.queued() if e.purpose == "reeval"}
    states.update({e.genome_id: "interrupted" if alive is False else "running"
                   for e in j.running() if e.purpose == "reeval"})
    return states


def state_word(state: RunState, gid: str, rec: GenomeRecord, not_confirmed: set,
               reevals: dict) -> tuple[str, str | None]:
    """(state word, detail): the list of words is in this module's docstring; the detail is the reason of
    a flag or failure, or the state of a candidate's re-evaluation."""
    is_seed = gid in state.seed_ids
    if rec.flagged:
        return "flagged", rec.flagged
    if rec.failed and (not is_seed or not rec.vals):
        return "failed", rec.failed
    if gid == state.incumbent:
        return "best", "confirmed" if rec.confirmed else None
    if rec.confirmed:
        return "confirmed", None
    if rec.candidate:
        return "candidate", f"re-evaluation {reevals[gid]}" if gid in reevals else None
    if gid in not_confirmed:
        return "not confirmed", None
    return ("seed" if is_seed else "evaluated"), None


def genome_rows(run: Run, state: RunState, top: int, alive: bool | None) -> list[dict]:
    """The table's rows, highest fitness first: at most `top` (0: all)."""
    j = run.journal
    not_confirmed = {e.get("genome_id") for e in j.events("not_confirmed")}
    reevals = _reeval_states(run, alive)
    ranked = sorted(state.records.items(), key=lambda kv: kv[1].fitness, reverse=True)
    rows = []
    for gid, rec in ranked[:top] if top > 0 else ranked:
        genome = j.genome(gid)
        word, detail = state_word(state, gid, rec, not_confirmed, reevals)
        lo, hi = interval(rec.mean, len(rec.vals), state.floor, state.floor_dof)
        rows.append({"id": gid, "state": word, "detail": detail, "fitness": _finite(rec.fitness),
                     "mean_val_bpb": rec.mean, "interval": [_finite(lo), _finite(hi)], "n_evals": len(rec.vals),
                     "heldout_thresholdout": rec.answer,
                     "operator": genome.operator, "parent": genome.parents[0] if genome.parents else None})
    return rows


def _decision_numbers(state: RunState, gid: str, incumbent: str, verdict: str, p: float | None) -> dict:
    """The numbers the sequential rule weighs: scores are mean + penalty (= -fitness)."""
    rec, best, c = state.records[gid], state.records[incumbent], state.config
    cand, inc = _finite(-rec.fitness), _finite(-best.fitness)
    prior = state.children_prior()
    return {"genome": gid, "verdict": verdict, "candidate": _genome_numbers(state, gid),
            "incumbent": _genome_numbers(state, incumbent), "floor": state.floor, "floor_dof": state.floor_dof,
            "difference": inc - cand if p is not None else None, "p_better": p, "confidence": c.confidence,
            "prior": list(prior) if prior and gid not in state.seed_ids else None,
            "max_evals": c.max_candidate_evals, "candidate_confidence": c.candidate_confidence}


def _decided(run: Run, gid: str) -> dict | None:
    """The run state replayed up to the fold that settled `gid`'s re-evaluations, and what it decided
    (None while it is still being re-evaluated)."""
    replay = RunState(run.config, run.journal)
    for evaluation in run.journal.done_evaluations():
        incumbent = replay.incumbent
        events = replay.fold(evaluation, evaluation.result or SlotResult(status="failed"))[1]
        if evaluation.genome_id != gid or evaluation.purpose != "reeval" or \
                any(e.kind == "contended" for e in events):
            continue
        kinds = {e.kind for e in events if e.genome_id == gid}
        rec = replay.records[gid]
        if "reeval" in kinds:
            continue  # undecided: one more re-evaluation
        verdict = "confirmed" if "new_best" in kinds else "flagged" if rec.flagged else \
            "failed" if rec.failed else "not confirmed"
        p = next((e.data.get("p_better") for e in events if e.genome_id == gid
                  and e.kind in ("new_best", "not_confirmed")), None)
        return {**_decision_numbers(replay, gid, incumbent, verdict, p), "reeval": "done"}
    return None


def latest_candidate(run: Run, state: RunState, alive: bool | None) -> dict | None:
    """The latest genome queued for a re-evaluation: the decision on it, or (pending) where it stands."""
    reevals = [e for e in run.journal.all_evaluations() if e.purpose == "reeval"]
    if not reevals or state.floor is None or state.incumbent is None:
        return None
    gid = reevals[-1].genome_id
    decided = _decided(run, gid)
    if decided is not None:
        return decided
    if gid not in state.records or gid == state.incumbent:
        return None
    return {**_decision_numbers(state, gid, state.incumbent, "pending", state.p_better(gid)),
            "reeval": _reeval_states(run, alive).get(gid, "queued")}


def status_dict(run: Run, state: RunState, top: int) -> dict:
    """Everything `evo status` shows, as data (the `--json` object; keys in this module's docstring)."""
    j = run.journal
    alive = run.controller_alive()
    owner = j.get_meta("controller") or {}
    counts = j.count_by_state()
    gone = alive is False
    seed, best = state.seed, state.best
    best_numbers = _genome_numbers(state, state.incumbent)
    if best_numbers:
        best_numbers.pop("penalty")
        best_numbers["gain_over_seed"] = seed.mean - best.mean if seed and seed.mean is not None else None
    seed_numbers = _genome_numbers(state, state.seed_ids[0] if state.seed_ids else None)
    if seed_numbers:
        seed_numbers.pop("penalty")
    t = state.thresholdout
    return {"run_dir": str(run.path),
            "evaluations": {"done": counts["done"], "limit": run.config.evals or None,
                            "running": 0 if gone else counts["running"], "queued": counts["queued"],
                            "interrupted": counts["running"] if gone else 0},
            "controller": {"alive": alive, "pid": owner.get("pid"), "host": owner.get("host"),
                           "since": owner.get("since")},
            "noise_floor": state.floor, "seed": seed_numbers, "best": best_numbers,
            "genomes": genome_rows(run, state, top, alive),
            "latest_candidate": latest_candidate(run, state, alive),
            "thresholdout": {"spent": t.state.spent, "budget": t.state.budget} if t else None,
            "integrity": run.integrity_line(), "sealed": bool((j.get_meta("integrity") or {}).get("sealed")),
            "sandboxes": j.sandboxes_used(),
            "flagged": {gid: rec.flagged for gid, rec in state.records.items() if rec.flagged},
            "llm": j.llm_totals()}


# ---------------------------------------------------------------- the same, for people
def _bpb(x) -> str:
    return f"{x:.4f}" if x is not None else "-"


def _n(count: int) -> str:
    return f"{count} evaluation" + ("" if count == 1 else "s")


def progress_line(d: dict) -> str:
    e, c = d["evaluations"], d["controller"]
    line = f"evaluations: {e['done']} done of {e['limit'] or 'unlimited'}, "
    if e["interrupted"]:
        line += (f"{e['interrupted']} interrupted (the controller is gone; `evo resume {d['run_dir']}` "
                 "re-runs them)")
    elif e["running"] and c["alive"] is None:
        line += (f"{e['running']} running (driven from host {c['host']}; whether that process still runs "
                 "cannot be told from here)")
    else:
        line += f"{e['running']} running"
    return line + f", {e['queued']} queued"


def decision_text(c: dict) -> str:
    """The footnote's numbers for the latest candidate."""
    cand, inc = c["candidate"], c["incumbent"]

    def score(g: dict) -> str:
        return _bpb(g["mean_val_bpb"]) + (f" + penalty {g['penalty']:.4f}" if g["penalty"] else "")

    head = (f"latest candidate {c['genome']}: mean {score(cand)} bpb over {_n(cand['n_evals'])} vs the "
            f"best{' then' if c['verdict'] != 'pending' else ''}, {inc['genome']}, {score(inc)} over "
            f"{_n(inc['n_evals'])}")
    if c["p_better"] is None:
        return f"{head}: its re-evaluation was {c['verdict']}, so it was never crowned"
    prior = (f", the child's mean shrunk toward what this run's children score ({c['prior'][0]:.4f} ± "
             f"{math.sqrt(c['prior'][1]):.4f})" if c.get("prior") else "")
    rule = (f"P(better) = {c['p_better']:.3f} from the difference {c['difference']:+.4f} over the noise floor "
            f"{c['floor']:.4f} (t, {c['floor_dof']} dof){prior}; crowned at P ≥ {c['confidence']:g}, given up at "
            f"P < 0.5 or after {c['max_evals']} evaluations")
    if c["verdict"] == "pending":
        return f"{head}: {rule}; so it is re-evaluated (re-evaluation {c['reeval']})"
    return f"{head}: {rule}: " + ("confirmed (crowned)" if c["verdict"] == "confirmed" else c["verdict"])


def _table(run: Run, d: dict):
    from rich.table import Table

    table = Table(title=f"{run.path}: best genomes")
    columns = ("id", "state", "fitness", "mean val_bpb (95%)", "evals", "held-out (Thresholdout)", "operator",
               "parent")
    for col in columns:
        table.add_column(col, no_wrap=col in ("id", "parent", "operator"))
    for r in d["genomes"]:
        word = f"{r['state']} ({r['detail']})" if r["detail"] else r["state"]
        lo, hi = r["interval"]
        mean = _bpb(r["mean_val_bpb"]) + (f" ± {(hi - lo) / 2:.4f}" if lo is not None and hi is not None else "")
        table.add_row(r["id"], word, _bpb(r["fitness"]), mean, str(r["n_evals"]),
                      _bpb(r["heldout_thresholdout"]), r["operator"], r["parent"] or "-")
    return table


def print_status(run: Run, state: RunState, top: int, console=None) -> None:
    """The table of the best genomes and the footer, on `console` (default: stdout)."""
    from rich.text import Text

    console = console or _console()
    d = status_dict(run, state, top)

    def say(text: str, style: str | None = None) -> None:  # as text: a genome's reason holds no markup
        console.print(Text(text, style=style or ""))

    console.print(_table(run, d))
    say(progress_line(d), "yellow" if d["evaluations"]["interrupted"] else None)
    seed, best = d["seed"], d["best"]
    if d["noise_floor"] is not None and seed and best:
        lo, hi = best["interval"]
        span = f", 95% interval {lo:.4f} .. {hi:.4f}" if lo is not None else ""
        say(f"noise floor: {d['noise_floor']:.4f} bpb; seed mean {seed['mean_val_bpb']:.4f}; best {best['genome']} "
            f"{best['mean_val_bpb']:.4f} ({best['gain_over_seed']:+.4f} over seed{span})")
    if d["thresholdout"]:
        t = d["thresholdout"]
        say(f"Thresholdout: {t['spent']} of {t['budget']} reveals spent (the held-out column is Thresholdout's "
            "answer: the val mean unless the held-out split disagrees by more than the threshold)")
    if d["latest_candidate"]:
        say(rule_text(d["latest_candidate"]), "dim")
        say(decision_text(d["latest_candidate"]))
    say(d["integrity"], None if d["sealed"] else "yellow")
    if d["sandboxes"]:
        weak = [s for s in d["sandboxes"] if s != "bwrap"]
        say(f"sandbox used by evaluations: {', '.join(d['sandboxes'])}"
            + (" (warning: weaker than bwrap)" if weak else ""))
    for gid, reason in d["flagged"].items():
        say(f"flagged: {gid}: {reason}", "red")
    llm = d["llm"]
    if llm["calls"]:
        say(f"LLM: {llm['calls']} calls, {llm['prompt_tokens']} prompt + {llm['completion_tokens']} completion "
            f"tokens, ${llm['cost_usd']:.4f}")
