"""Chat completions with retries, cost accounting, a budget, model choice and a call journal.

    client = LLMClient(config, run_dir, record_call=journal.record_llm_call)
    done = client.complete(messages, purpose="llm_mutation", rng=child_rng)    # -> Completion
    client.reward(done.model, improvement)                      # feedback for selection = "ucb"

Model choice draws from the `rng` passed to `complete` (the child's own stream, derived from the
run seed), so a resumed run chooses as an uninterrupted one would; without one it falls back to
the client's `rng`. Retry jitter uses a separate unseeded stream: it changes waits, never results.

Every attempt (including each retry) is passed to `record_call` as one dict and leaves its
prompt and response texts in `run_dir/llm/<call_id>.prompt.txt` / `.response.txt`.
The API key is read from the configured environment variable at call time, handed to the
`openai` client and nowhere else; any text that is written or raised is scrubbed of it.

Faults (429 honouring Retry-After, 5xx, timeouts, connection errors, garbage bodies, empty or
truncated answers, answers the caller's `validate` rejects) are retried with exponential
backoff up to `max_retries`; then `LLMUnavailable` is raised, an `OperatorFailure`, so the
loop drops the child and fills the slot with another. Other 4xx (bad key, unknown model) are
not retried. With `budget_usd` reached, `complete` raises `BudgetExhausted` before calling.
"""
from __future__ import annotations

import email.utils
import hashlib
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from evo.genome import OperatorFailure
from evo.llm_config import LLMConfig, ModelConfig

RETRIED = ("rate_limited", "server_error", "timeout", "connection_error", "bad_response", "empty", "truncated",
           "invalid")
NO_KEY_PLACEHOLDER = "no-key"  # sent when api_key_env = "" (local servers ignore it)
MIN_SCRUB_LEN = 6
RAW_BODY_CHARS = 20000


class LLMUnavailable(OperatorFailure):
    """No usable answer after the retries (or a fault that retrying cannot fix)."""

    def __init__(self, message: str, *, model: str = "", response: str = "", call_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.model, self.response, self.call_ids = model, response, call_ids


class BudgetExhausted(OperatorFailure):
    """The run's budget_usd is spent: no more LLM calls; knob operators carry on."""

    response = ""


class InvalidAnswer(Exception):
    """Raised by a `validate` callback: the answer is unusable as it stands (retried like a fault)."""


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    call_id: str = ""
    finish_reason: str = "stop"
    call_ids: tuple[str, ...] = ()  # every attempt of this completion, the last one is call_id


@dataclass
class _ModelStats:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    rewards: int = 0
    improvement: float = 0.0


@dataclass
class _Attempt:
    status: str
    text: str = ""
    raw: str = ""
    error: str = ""
    http_status: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    retry_after_s: float | None = None
    extra: dict = field(default_factory=dict)


def render_messages(messages: list[dict]) -> str:
    """The prompt as one text file."""
    return "\n\n".join(f"=== {m.get('role', '?')} ===\n{m.get('content', '')}" for m in messages) + "\n"


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class LLMClient:
    """Thread-safe: several proposals may be in flight at once."""

    UCB_C = 1.0  # exploration weight of the UCB bonus
    COST_FLOOR_USD = 1e-4  # per call, so free (local) models rank by improvement per call

    def __init__(self, config: LLMConfig, run_dir: str | os.PathLike, record_call: Callable[[dict], None],
                 rng: random.Random | None = None, *, sleep: Callable[[float], None] = time.sleep,
                 environ: Mapping[str, str] | None = None):
        if not config.models:
            raise ValueError("LLMClient needs at least one model in LLMConfig.models")
        self.config = config
        self.run_dir = Path(run_dir)
        self.calls_dir = self.run_dir / "llm"
        self.record_call = record_call
        self.rng = rng if rng is not None else random.Random()  # model choice when a call brings no rng
        self._jitter = random.Random()  # retry waits only
        self.sleep = sleep
        self.environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._spent = 0.0
        self._stats = {m.model: _ModelStats() for m in config.models}
        self._origins: dict[str, dict] = {}
        self.on_reward: Callable[[str, float], None] | None = None
        self._clients: dict[str, tuple] = {}  # model -> (sha256 of its key, openai.OpenAI)
        self._next = self._first_free_id()

    # ---------------------------------------------------------------- state
    @property
    def spent_usd(self) -> float:
        return self._spent

    @property
    def budget_exhausted(self) -> bool:
        return self.config.budget_usd is not None and self._spent >= self.config.budget_usd

    def usage(self) -> dict[str, dict]:
        """Per model: calls, prompt_tokens, completion_tokens, cost_usd, rewards, improvement."""
        with self._lock:
            return {name: dict(vars(s)) for name, s in self._stats.items()}

    def restore(self, records: Iterable[dict]) -> None:
        """Replay journaled call records (from `record_call`) after a restart: spend and call counts."""
        with self._lock:
            for r in records:
                cost = float(r.get("cost_usd") or 0.0)
                self._spent += cost
                s = self._stats.get(r.get("model"))
                if s is not None:
                    s.calls += 1
                    s.cost_usd += cost
                    s.prompt_tokens += int(r.get("prompt_tokens") or 0)
                    s.completion_tokens += int(r.get("completion_tokens") or 0)

    def reward(self, model: str, improvement: float) -> None:
        """Feedback for the bandit: how much a child of `model` improved on its parent (val_bpb
        decrease; negative or failed counts as 0). Unknown model names are ignored. Each reward is
        passed to `on_reward(model, improvement)` when set (the breeder journals it for a resume)."""
        with self._lock:
            s = self._stats.get(model)
            if s is None:
                return
            gain = max(0.0, float(improvement)) if math.isfinite(improvement) else 0.0
            s.rewards += 1
            s.improvement += gain
        if self.on_reward is not None:
            self.on_reward(model, gain)

    def note_origin(self, genome_id: str, **info) -> None:
        """Operators record which model and calls made a child (see `origin_of`)."""
        with self._lock:
            self._origins[genome_id] = dict(info)

    def origin_of(self, genome_id: str) -> dict | None:
        """{"model", "call_ids", "cost_usd", "idea"} of an LLM-made child, or None."""
        with self._lock:
            info = self._origins.get(genome_id)
            return dict(info) if info else None

    # ---------------------------------------------------------------- model choice
    def choose_model(self, rng: random.Random | None = None) -> ModelConfig:
        """By weight, or with selection = "ucb" by UCB1 on improvement per dollar. Draws from `rng`
        (the client's own stream when None); the same rng state and the same rewards and calls
        so far give the same model. With one usable model nothing is drawn."""
        rng = self.rng if rng is None else rng
        models = [m for m in self.config.models if m.weight > 0]
        if len(models) == 1:
            return models[0]
        with self._lock:
            if self.config.selection != "ucb":
                return rng.choices(models, weights=[m.weight for m in models])[0]
            stats = {m.model: self._stats[m.model] for m in models}
            untried = [m for m in models if stats[m.model].rewards == 0]
            if untried:
                fewest = min(stats[m.model].calls for m in untried)
                return rng.choice([m for m in untried if stats[m.model].calls == fewest])
            total = sum(s.rewards for s in stats.values())
            eff = {name: s.improvement / max(s.cost_usd + self.COST_FLOOR_USD * s.calls, 1e-12)
                   for name, s in stats.items()}
            best = max(eff.values())
            scores = {name: (eff[name] / best if best > 0 else 0.0)
                      + self.UCB_C * math.sqrt(2.0 * math.log(total) / s.rewards) for name, s in stats.items()}
            top = max(scores.values())
            return rng.choice([m for m in models if scores[m.model] >= top - 1e-12])

    def _model_named(self, name: str) -> ModelConfig:
        for m in self.config.models:
            if m.model == name:
                return m
        raise ValueError(f"no configured model is called {name!r}")

    # ---------------------------------------------------------------- calls
    def complete(self, messages: list[dict], purpose: str, validate: Callable[[str], None] | None = None,
                 model: str | None = None, rng: random.Random | None = None) -> Completion:
        """One chat completion, retried on faults. `validate(text)` may raise InvalidAnswer to
        have an answer treated as a fault (e.g. no edit blocks). `model` names the model to use
        (e.g. the one that answered the first round); otherwise `choose_model(rng)` picks, drawing
        from `rng` (the child's own stream; the client's when None).
        Raises LLMUnavailable or BudgetExhausted (both OperatorFailure)."""
        model = self._model_named(model) if model else self.choose_model(rng)
        prompt_rel: str | None = None
        call_ids: list[str] = []
        last = _Attempt(status="none")
        for attempt in range(self.config.max_retries + 1):
            self._check_budget()
            call_id = self._new_id()
            call_ids.append(call_id)
            if prompt_rel is None:
                prompt_rel = f"llm/{call_id}.prompt.txt"
                self._write(prompt_rel, render_messages(messages))
            created = time.time()
            start = time.monotonic()
            last = self._attempt(model, messages)
            latency = time.monotonic() - start
            if last.status == "ok" and validate is not None:
                try:
                    validate(last.text)
                except InvalidAnswer as exc:
                    last.status, last.error = "invalid", str(exc)
            cost = self._charge(model, last)
            wait = self._wait_before_retry(last, attempt)
            self._journal(call_id, model, purpose, attempt, last, cost, wait,
                          created=created, latency=latency, prompt_rel=prompt_rel)
            if last.status == "ok":
                return Completion(text=last.text, model=model.model, prompt_tokens=last.prompt_tokens,
                                  completion_tokens=last.completion_tokens, cost_usd=cost, latency_s=latency,
                                  call_id=call_id, finish_reason=last.finish_reason or "stop",
                                  call_ids=tuple(call_ids))
            if wait is None:
                break
            self.sleep(wait)
        self.reward(model.model, 0.0)  # a model that gives nothing usable earns nothing
        reason = f"{last.status}: {self._scrub(last.error)[:500]}" if last.error else last.status
        raise LLMUnavailable(f"{model.model}: no usable answer after {len(call_ids)} attempt(s) ({reason})",
                             model=model.model, response=self._scrub(last.text or last.raw)[:RAW_BODY_CHARS],
                             call_ids=tuple(call_ids))

    def _charge(self, model: ModelConfig, a: _Attempt) -> float:
        """Count one attempt's tokens and cost (failed attempts that used tokens cost too)."""
        cost = model.cost_usd(a.prompt_tokens, a.completion_tokens)
        with self._lock:
            self._spent += cost
            s = self._stats[model.model]
            s.calls += 1
            s.cost_usd += cost
            s.prompt_tokens += a.prompt_tokens
            s.completion_tokens += a.completion_tokens
        return cost

    def _journal(self, call_id: str, model: ModelConfig, purpose: str, attempt: int, a: _Attempt, cost: float,
                 wait: float | None, *, created: float, latency: float, prompt_rel: str) -> None:
        """Keep the attempt's response text (when there is one) and pass its record to `record_call`."""
        response_rel = None
        answered = a.status in ("ok", "invalid", "truncated", "empty")
        body = a.text if answered else a.raw
        if body or answered:
            response_rel = f"llm/{call_id}.response.txt"
            self._write(response_rel, body)
        self.record_call({
            "call_id": call_id, "model": model.model, "base_url": model.base_url, "purpose": purpose,
            "attempt": attempt + 1, "status": a.status, "error": self._scrub(a.error)[:2000],
            "http_status": a.http_status, "finish_reason": a.finish_reason,
            "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "usage_estimated": a.usage_estimated, "cost_usd": cost, "latency_s": round(latency, 4),
            "created": created, "prompt_path": prompt_rel, "response_path": response_rel,
            "retry_after_s": a.retry_after_s, "wait_s": wait,
        })

    def _wait_before_retry(self, a: _Attempt, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to stop retrying."""
        cfg = self.config
        if a.status == "ok" or a.status not in RETRIED or attempt >= cfg.max_retries:
            return None
        if a.status == "rate_limited" and a.retry_after_s is not None:
            if a.retry_after_s > cfg.max_backoff_s:
                a.error += f" (Retry-After {a.retry_after_s:g} s is longer than llm.max_backoff_s)"
                return None
            return a.retry_after_s
        base = min(cfg.max_backoff_s, cfg.backoff_s * (2 ** attempt))
        return base * (0.5 + 0.5 * self._jitter.random())

    def _check_budget(self) -> None:
        if self.budget_exhausted:
            raise BudgetExhausted(f"LLM budget of ${self.config.budget_usd:.2f} reached (${self._spent:.4f} "
                                  "spent): no more LLM calls, knob operators carry on")

    def _key(self, model: ModelConfig) -> str:
        if not model.api_key_env:
            return NO_KEY_PLACEHOLDER
        key = self.environ.get(model.api_key_env)
        if not key:
            raise LLMUnavailable(f"{model.model}: the environment variable {model.api_key_env} holding its API key "
                                 "is not set", model=model.model)
        return key

    def _attempt(self, model: ModelConfig, messages: list[dict]) -> _Attempt:
        import openai

        try:
            key = self._key(model)
        except LLMUnavailable as exc:
            return _Attempt(status="no_key", error=str(exc))
        client = self._openai(model, key)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model.model, messages=messages, temperature=model.temperature, max_tokens=model.max_tokens)
            body = raw.http_response.text
            try:
                parsed = raw.parse()
            except Exception as exc:  # not JSON at all
                return _Attempt(status="bad_response", raw=body[:RAW_BODY_CHARS],
                                error=f"unreadable body ({type(exc).__name__}: {str(exc)[:200]})")
            return self._read(parsed, body, messages)
        except openai.RateLimitError as exc:
            return _Attempt(status="rate_limited", http_status=429, error=_message(exc), raw=_body(exc),
                            retry_after_s=parse_retry_after(exc.response.headers))
        except openai.APITimeoutError as exc:
            return _Attempt(status="timeout", error=f"no answer within {model.timeout_s:g} s ({_message(exc)})")
        except openai.APIConnectionError as exc:
            return _Attempt(status="connection_error", error=_message(exc))
        except openai.APIStatusError as exc:
            code = exc.status_code
            status = "server_error" if code >= 500 or code in (408, 409) else "client_error"
            return _Attempt(status=status, http_status=code, error=_message(exc), raw=_body(exc))
        except Exception as exc:  # anything else the client raises while reading (e.g. bad JSON)
            return _Attempt(status="bad_response", error=f"{type(exc).__name__}: {str(exc)[:300]}")

    def _openai(self, model: ModelConfig, key: str):
        """One `openai.OpenAI` per model, rebuilt when the key in the environment changes."""
        import openai

        fingerprint = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            cached = self._clients.get(model.model)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            client = openai.OpenAI(base_url=model.base_url, api_key=key, max_retries=0, timeout=model.timeout_s)
            self._clients[model.model] = (fingerprint, client)
        if cached is not None:
            cached[1].close()
        return client

    def close(self) -> None:
        """Close the HTTP connections (optional; at the end of a run)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for _, client in clients:
            client.close()

    @staticmethod
    def _read(parsed, body: str, messages: list[dict]) -> _Attempt:
        choices = getattr(parsed, "choices", None)
        if not choices:
            return _Attempt(status="bad_response", raw=body[:RAW_BODY_CHARS], error="the body has no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        finish = getattr(choice, "finish_reason", None)
        if text is not None and not isinstance(text, str):
            return _Attempt(status="bad_response", raw=body[:RAW_BODY_CHARS], error="the message content is not text")
        text = text or ""
        usage = getattr(parsed, "usage", None)
        p = getattr(usage, "prompt_tokens", None)
        c = getattr(usage, "completion_tokens", None)
        estimated = not (isinstance(p, int) and isinstance(c, int))
        if estimated:  # no usage reported: estimate about four characters a token, so the budget still holds
            p = sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1
            c = len(text) // 4 + 1
        a = _Attempt(status="ok", text=text, raw=body[:RAW_BODY_CHARS], finish_reason=finish, http_status=200,
                     prompt_tokens=int(p), completion_tokens=int(c), usage_estimated=estimated)
        if not text.strip():
            a.status, a.error = "empty", "the answer is empty"
        elif finish == "length":
            a.status, a.error = "truncated", "the answer was cut off at max_tokens (finish_reason 'length')"
        return a

    # ---------------------------------------------------------------- files
    def _first_free_id(self) -> int:
        highest = 0
        if self.calls_dir.is_dir():
            for path in self.calls_dir.glob("*.prompt.txt"):
                stem = path.name.split(".", 1)[0]
                if stem.isdigit():
                    highest = max(highest, int(stem))
            for path in self.calls_dir.glob("*.response.txt"):
                stem = path.name.split(".", 1)[0]
                if stem.isdigit():
                    highest = max(highest, int(stem))
        return highest + 1

    def _new_id(self) -> str:
        with self._lock:
            n, self._next = self._next, self._next + 1
        return f"{n:06d}"

    def _write(self, rel: str, text: str) -> None:
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._scrub(text), encoding="utf-8", errors="backslashreplace")  # a lone surrogate too

    def _scrub(self, text: str) -> str:
        """Remove every configured key's value from a text before it is written or raised."""
        if not text:
            return text or ""
        for m in self.config.models:
            if m.api_key_env:
                key = self.environ.get(m.api_key_env)
                if key and len(key) >= MIN_SCRUB_LEN and key in text:
                    text = text.replace(key, "[redacted]")
        return text


def _message(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:500]}"


def _body(exc) -> str:
    try:
        return exc.response.text[:RAW_BODY_CHARS]
    except Exception:
        return ""
