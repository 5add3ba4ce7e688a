"""Prompts from the text templates in evo/prompts/ (string.Template, `$name` placeholders).

Templates: brief.txt (the research brief, sent as the system message), format.txt (the
answer format, `$answer_format`), mutate.txt, crossover.txt, repair.txt, summary.txt.
A `prompts_dir` overrides any of them file by file; a user `brief` file extends the
built-in brief or replaces it. Everything is loaded and checked when the book is made,
so a broken template is a UserError at start.

What may enter a prompt is fixed here: a parent's source and its public metrics (a
`ParentInfo`, which has no held-out fields), the run's noise floor, the slot's regime
(`SlotFacts`: budget, hardware, train corpus), the knob study's text (val-based scores only), the
latest run note, and history rows, of
which only the keys `child`, `operator`, `idea`, `delta_val_bpb`, `n_evals` and `status`
are ever read.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

from evo.genome import ParentInfo, SlotFacts, diff_text
from gpt.errors import UserError

RAW_TEXTS = ("brief", "format")  # plain text, no placeholders ($ is just a dollar sign)
TEMPLATES = {  # template -> the placeholders it may use
    "mutate": ("parent_source", "parent_metrics", "failure", "history", "memory", "answer_format", "setting",
               "study"),
    "crossover": ("source_a", "metrics_a", "metrics_b", "diff", "history", "memory", "answer_format", "setting"),
    "repair": ("error",),
    "summary": ("history", "memory", "n_rows"),
}
HISTORY_KEYS = ("child", "operator", "idea", "delta_val_bpb", "n_evals", "status")
STDERR_TAIL_CHARS = 2000
IDEA_CHARS = 90
MEMORY_CHARS = 3000


def _packaged(name: str) -> str:
    return resources.files("evo").joinpath("prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")


class PromptBook:
    """Loaded, checked templates; builds chat messages ([{"role", "content"}, ...])."""

    def __init__(self, prompts_dir: str | Path | None = None, brief: str | Path | None = None,
                 brief_mode: str = "extend"):
        def load(name: str) -> tuple[str, str]:
            if prompts_dir is not None:
                path = Path(prompts_dir) / f"{name}.txt"
                if path.is_file():
                    return path.read_text(encoding="utf-8"), str(path)
            return _packaged(name), f"packaged template {name}.txt"

        self.templates: dict[str, Template] = {name: _checked(*load(name), allowed)
                                               for name, allowed in TEMPLATES.items()}
        built_in = load("brief")[0].strip()
        if brief is not None:
            try:
                user = Path(brief).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UserError(f"llm.brief: cannot read {brief} ({exc.strerror or exc})") from None
            if brief_mode == "replace":
                built_in = user
            elif brief_mode == "extend":
                built_in = f"{built_in}\n\nFROM THE PERSON RUNNING THIS SEARCH\n{user}"
            else:
                raise UserError(f"llm.brief_mode must be 'extend' or 'replace', got {brief_mode!r}")
        self.brief = built_in
        self.answer_format = load("format")[0].strip()

    @classmethod
    def from_config(cls, config) -> "PromptBook":
        """From an LLMConfig (its prompts_dir, brief and brief_mode)."""
        return cls(config.prompts_dir, config.brief, config.brief_mode)

    def _fill(self, name: str, **values) -> str:
        return self.templates[name].substitute(values)

    def _messages(self, user: str) -> list[dict]:
        return [{"role": "system", "content": self.brief}, {"role": "user", "content": user}]

    # ---------------------------------------------------------------- prompts
    def mutation(self, parent: ParentInfo, history: list[dict], memory: str | None,
                 noise_floor: float | None = None, slot: SlotFacts | None = None,
                 study: str = "(not given)") -> list[dict]:
        return self._messages(self._fill(
            "mutate",
            setting=setting_text(slot),
            study=study,
            parent_source=parent.genome.source.rstrip("\n"),
            parent_metrics=metrics_text(parent, noise_floor),
            failure=failure_text(parent),
            history=history_table(history),
            memory=memory_text(memory),
            answer_format=self.answer_format,
        ))

    def crossover(self, a: ParentInfo, b: ParentInfo, history: list[dict], memory: str | None,
                  noise_floor: float | None = None, slot: SlotFacts | None = None) -> list[dict]:
        diff = diff_text(a.genome.source, b.genome.source, "a.py", "b.py").rstrip("\n")
        return self._messages(self._fill(
            "crossover",
            setting=setting_text(slot),
            source_a=a.genome.source.rstrip("\n"),
            metrics_a=metrics_text(a, noise_floor),
            metrics_b=metrics_text(b, noise_floor),
            diff=diff or "(the two scripts are identical)",
            history=history_table(history),
            memory=memory_text(memory),
            answer_format=self.answer_format,
        ))

    def repair(self, error: str) -> str:
        """The user message of the repair round (after the failed answer as the assistant turn)."""
        return self._fill("repair", error=str(error))

    def summary(self, history: list[dict], memory: str | None) -> list[dict]:
        return self._messages(self._fill("summary", history=history_table(history), memory=memory_text(memory),
                                         n_rows=str(len(history))))


def _checked(text: str, origin: str, allowed: tuple[str, ...]) -> Template:
    template = Template(text)
    try:
        template.substitute({name: "" for name in allowed})
    except KeyError as exc:
        raise UserError(f"{origin} uses the unknown placeholder ${exc.args[0]}; allowed here: "
                        f"{', '.join('$' + a for a in allowed) or 'none'} (write $$ for a literal $)") from None
    except ValueError as exc:
        raise UserError(f"{origin}: {exc}; write $$ for a literal $") from None
    return template


# -------------------------------------------------------------------- pieces
def _bpb(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def metrics_text(parent: ParentInfo, noise_floor: float | None = None) -> str:
    """A parent's public metrics, one per line. Reads only public ParentInfo fields."""
    floor = parent.noise_floor if parent.noise_floor is not None else noise_floor
    evals = f"{parent.n_evals} evaluation{'s' if parent.n_evals != 1 else ''}"
    lines = [f"mean val_bpb: {_bpb(parent.mean_val_bpb)} over {evals}"]
    if floor is not None:
        lines.append(f"noise floor: {floor:.4f} (differences smaller than this are noise)")
    if parent.train_seconds is not None:
        lines.append(f"train seconds (the runner's clock, connect to submit): {parent.train_seconds:.1f}")
    if parent.steps is not None:
        lines.append(f"steps (as the script printed them): {parent.steps}")
        if parent.train_seconds:
            lines.append(f"throughput: {parent.steps / parent.train_seconds:.2f} steps per train second")
    if parent.params is not None:
        lines.append(f"parameters (as the script printed them): {parent.params:,}")
    if parent.train_loss is not None:
        lines.append(f"final train loss (as the script printed it, nats per token): {parent.train_loss:.4f}")
    return "\n".join(lines)


def setting_text(slot: SlotFacts | None) -> str:
    """The regime the child will train in (budget, hardware, corpus), or a line saying it is unknown."""
    return slot.describe() if slot else "(not given: assume the script's own settings fit the slot)"


def failure_text(parent: ParentInfo) -> str:
    """The reason and stderr tail of the parent's latest failed child, or ''."""
    if not parent.last_child_failure:
        return ""
    reason, stderr = parent.last_child_failure
    tail = (stderr or "").strip()
    if len(tail) > STDERR_TAIL_CHARS:
        tail = "..." + tail[-STDERR_TAIL_CHARS:]
    text = f"\nTHE PARENT'S PREVIOUS CHILD FAILED: {reason}\n"
    if tail:
        text += f"stderr (tail):\n```\n{tail}\n```\n"
    return text + "Avoid that failure.\n"


def _delta(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:+.4f}"
    return "-"


def history_table(rows: list[dict]) -> str:
    """Compact table of recent children. Reads only HISTORY_KEYS of each row."""
    if not rows:
        return "(no children yet)"
    lines = ["child        | operator        | val_bpb vs parent | evals | status        | idea"]
    for row in rows:
        child, operator, idea, delta, n_evals, status = (row.get(k) for k in HISTORY_KEYS)
        idea = " ".join(str(idea or "").split())
        if len(idea) > IDEA_CHARS:
            idea = idea[: IDEA_CHARS - 1] + "…"
        lines.append(f"{str(child or '-')[:12]:<12} | {str(operator or '-')[:15]:<15} | {_delta(delta):>17} | "
                     f"{str(n_evals if n_evals is not None else '-'):>5} | {str(status or '-')[:13]:<13} | "
                     f"{idea or '-'}")
    return "\n".join(lines)


def memory_text(memory: str | None) -> str:
    text = (memory or "").strip()
    if not text:
        return "(no notes yet)"
    return text if len(text) <= MEMORY_CHARS else text[:MEMORY_CHARS] + "…"
