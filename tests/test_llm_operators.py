"""LLM mutation and crossover end to end: evo -> real `openai` client -> HTTP on 127.0.0.1 -> scripted answers."""
import json
import random
from pathlib import Path

import pytest

from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo
from evo.llm import EditFailure, LLMClient, LLMConfig, LLMCrossover, LLMMutation, LLMUnavailable, summarize
from evo.llm.prompts import HISTORY_KEYS
from llm_server import LLMServer, answer, garbage, lr_edit_answer, rate_limited, server_error, unauthorized

ROOT = Path(__file__).resolve().parent.parent
TINY = (ROOT / "genomes" / "tiny_cpu.py").read_text()
KEY_ENV = "EVO_TEST_OP_KEY"
KEY = "sk-live-Q9w8E7r6T5y4U3i2O1p0"


def block(search, replace):
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


class Run:
    """A client writing its call journal to run_dir/journal.jsonl, as the loop does."""

    def __init__(self, server, run_dir, models=("coder",), client_seed=1, **cfg):
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records = []
        models = [{"model": name, "base_url": server.base_url, "api_key_env": KEY_ENV,
                   "price_in_per_m": 3.0, "price_out_per_m": 15.0, "timeout_s": 5.0} for name in models]
        config = LLMConfig.from_dict({"max_retries": 2, "backoff_s": 0.01, "history_rows": 10, **cfg,
                                      "models": models})
        self.client = LLMClient(config, run_dir, self.record, random.Random(client_seed), environ={KEY_ENV: KEY})

    def record(self, call):
        self.records.append(call)
        with open(self.dir / "journal.jsonl", "a") as f:
            f.write(json.dumps(call) + "\n")


def parent(source=TINY, bpb=1.95, **kw):
    return ParentInfo(genome=Genome(source), mean_val_bpb=bpb, n_evals=3, noise_floor=0.004, train_seconds=29.7,
                      steps=850, **kw)


def test_mutation_applies_edits(server, tmp_path):
    run = Run(server, tmp_path)
    text = ("IDEA: lower the learning rate and use beta2 0.99\nRATIONALE: the loss is noisy late in the run.\n\n"
            + block("LEARNING_RATE = 3e-3", "LEARNING_RATE = 2e-3")
            + block("optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, "
                    "betas=(0.9, 0.95))",
                    "optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, "
                    "betas=(0.9, 0.99))"))
    server.script(answer(text, prompt_tokens=3000, completion_tokens=200))
    op = LLMMutation(run.client)
    assert (op.name, op.arity) == ("llm_mutation", 1)
    p = parent()
    child = op([p], random.Random(0))
    expected = TINY.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 2e-3").replace("betas=(0.9, 0.95)",
                                                                                      "betas=(0.9, 0.99)")
    assert child.source == expected
    assert child.parents == (p.genome.id,) and child.operator == "llm_mutation"
    assert child.rationale == "lower the learning rate and use beta2 0.99\nthe loss is noisy late in the run."
    origin = run.client.origin_of(child.id)
    assert origin["model"] == "coder" and origin["cost_usd"] == pytest.approx(3000 * 3e-6 + 200 * 15e-6)
    prompt = server.prompts()[0]
    assert TINY.strip() in prompt and "mean val_bpb: 1.9500 over 3 evaluations" in prompt
    assert "noise floor: 0.0040" in prompt and "connect to submit): 29.7" in prompt
    assert "steps (as the script printed them): 850" in prompt
    assert server.requests[0]["messages"][0]["role"] == "system"
    assert "train_batches" in server.requests[0]["messages"][0]["content"]


def test_crossover_combines_two_parents(server, tmp_path):
    run = Run(server, tmp_path)
    a = parent(TINY.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 2e-3"), bpb=1.80)
    b = parent(TINY.replace("WIDTH = 128", "WIDTH = 192"), bpb=1.90)
    server.script(answer("IDEA: B's width with A's learning rate\nRATIONALE: both helped.\n"
                         + block("WIDTH = 128  # evo: pow2(32, 512)", "WIDTH = 192  # evo: pow2(32, 512)")))
    op = LLMCrossover(run.client)
    assert (op.name, op.arity) == ("llm_crossover", 2)
    child = op([b, a], random.Random(0))  # the better parent is A whatever the order
    assert child.source == TINY.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 2e-3").replace("WIDTH = 128",
                                                                                                  "WIDTH = 192")
    assert child.parents == (a.genome.id, b.genome.id) and child.operator == "llm_crossover"
    prompt = server.prompts()[0]
    assert "mean val_bpb: 1.8000" in prompt and "mean val_bpb: 1.9000" in prompt
    assert "-LEARNING_RATE = 2e-3  # evo: log(1e-4, 3e-2)\n+LEARNING_RATE = 3e-3  # evo: log(1e-4, 3e-2)" in prompt
    assert "+WIDTH = 192" in prompt
    assert prompt.index("1.8000") < prompt.index("1.9000")


def test_edit_that_does_not_apply_is_repaired(server, tmp_path):
    run = Run(server, tmp_path)
    wrong = "IDEA: smaller lr\nRATIONALE: r\n" + block("LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3")
    right = "IDEA: smaller lr\nRATIONALE: r\n" + block("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3")
    server.script(wrong, right)
    child = LLMMutation(run.client)([parent()], random.Random(0))
    assert child.source == TINY.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3")
    repair = server.requests[1]["messages"]
    assert repair[:2] == server.requests[0]["messages"]
    assert repair[2] == {"role": "assistant", "content": wrong}
    assert "do not match" in repair[3]["content"] and "LEARNING_RATE = 3e-3" in repair[3]["content"]
    assert [r["purpose"] for r in run.records] == ["llm_mutation", "llm_mutation:repair"]
    assert len(run.client.origin_of(child.id)["call_ids"]) == 2


@pytest.mark.parametrize("first, message", [
    (block("DEPTH = 2  # evo: range(1, 8)", "DEPTH = 2  # evo: range(1, 8)\nif True\n    pass"), "does not parse"),
    (block("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-3  # tuned"), "unchanged"),
    ("<<<<<<< SEARCH\nLEARNING_RATE = 3e-3\n>>>>>>> REPLACE\n", "no '=======' line"),
])
def test_unparseable_or_unchanged_results_get_a_repair_round(server, tmp_path, first, message):
    run = Run(server, tmp_path)
    server.script("IDEA: x\n" + first, "IDEA: y\n" + block("DEPTH = 2", "DEPTH = 3"))
    child = LLMMutation(run.client)([parent()], random.Random(0))
    assert "DEPTH = 3" in child.source
    assert message in server.requests[1]["messages"][-1]["content"]


def test_edit_that_stays_broken_is_an_operator_failure(server, tmp_path):
    run = Run(server, tmp_path)
    second = "IDEA: again\n" + block("NOT IN THE SCRIPT = 1", "X = 2")
    server.script("IDEA: try\n" + block("LEARNING_RATE = 9", "LEARNING_RATE = 1"), second)
    with pytest.raises(EditFailure) as err:
        LLMMutation(run.client)([parent()], random.Random(0))
    assert isinstance(err.value, OperatorFailure)
    assert "after one repair round" in str(err.value) and err.value.response == second
    assert len(err.value.call_ids) == 2 and len(server.requests) == 2
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [(r["purpose"], r["status"]) for r in journal] == [("llm_mutation", "ok"), ("llm_mutation:repair", "ok")]
    assert (tmp_path / journal[1]["response_path"]).read_text() == second
    assert run.client.usage()["coder"]["rewards"] == 1  # a zero reward for the bandit


def test_answer_without_edit_blocks_is_retried(server, tmp_path):
    run = Run(server, tmp_path)
    server.script("I think you should lower the learning rate.",
                  "IDEA: lr\n" + block("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3"))
    child = LLMMutation(run.client)([parent()], random.Random(0))
    assert "LEARNING_RATE = 1e-3" in child.source
    assert [r["status"] for r in run.records] == ["invalid", "ok"]
    assert server.requests[0] == server.requests[1]  # the same prompt again, not a repair


def test_endpoint_faults_drop_the_child(server, tmp_path):
    run = Run(server, tmp_path, max_retries=2)
    server.script(rate_limited(0), server_error(500), garbage())
    with pytest.raises(LLMUnavailable) as err:
        LLMMutation(run.client)([parent()], random.Random(0))
    assert isinstance(err.value, OperatorFailure)
    assert [r["status"] for r in run.records] == ["rate_limited", "server_error", "bad_response"]


def test_wrong_number_of_parents(server, tmp_path):
    run = Run(server, tmp_path)
    with pytest.raises(OperatorFailure, match="needs 2 parent"):
        LLMCrossover(run.client)([parent()], random.Random(0))


def test_the_model_is_drawn_from_the_child_rng(tmp_path):
    with LLMServer(default=lr_edit_answer) as server:
        runs = [Run(server, tmp_path / name, models=("coder", "writer"), client_seed=seed)
                for name, seed in (("one", 1), ("two", 2))]
        chosen, noted = [], []
        for run in runs:
            models = []
            for i in range(8):
                op = LLMCrossover(run.client) if i % 4 == 3 else LLMMutation(run.client)
                parents = [parent(), parent(TINY.replace("DEPTH = 2", "DEPTH = 3"), bpb=1.99)][:op.arity]
                models.append(run.client.origin_of(op(parents, random.Random(i)).id)["model"])
            chosen.append(models)
            summarize(run.client, [], rng=random.Random(11))
            noted.append(run.records[-1]["model"])
    assert chosen[0] == chosen[1] and set(chosen[0]) == {"coder", "writer"}
    assert noted[0] == noted[1]


def test_history_memory_and_failure_reach_the_prompt(server, tmp_path):
    run = Run(server, tmp_path)
    history = [{"child": f"c{i:011d}", "operator": "knob", "idea": f"idea number {i}", "delta_val_bpb": -0.001 * i,
                "status": "ok"} for i in range(15)]
    history.append({"child": "dead00000000", "operator": "llm_mutation", "idea": "fused kernel", "delta_val_bpb": None,
                    "status": "failed"})
    ctx = OperatorContext(history=tuple(history), memory="What worked: warmdown 0.4.", noise_floor=0.01)
    server.script("IDEA: x\n" + block("DEPTH = 2", "DEPTH = 3"), "IDEA: x\n" + block("DEPTH = 2", "DEPTH = 3"))
    p = ParentInfo(genome=Genome(TINY), mean_val_bpb=2.0, n_evals=1,
                   last_child_failure=("export_error", "Traceback ...\nExportError: data-dependent shape"))
    op = LLMMutation(run.client)
    op([p], random.Random(0), ctx)
    prompt = server.prompts()[0]
    assert "idea number 14" in prompt and "-0.0140" in prompt and "fused kernel" in prompt
    assert "idea number 5" not in prompt  # only the last history_rows = 10
    assert "What worked: warmdown 0.4." in prompt and "noise floor: 0.0100" in prompt
    assert "export_error" in prompt and "ExportError: data-dependent shape" in prompt
    op([p], random.Random(0))  # the context belongs to the call: none given, none shown
    bare = server.prompts()[1]
    assert "idea number 14" not in bare and "What worked: warmdown 0.4." not in bare
    assert "ExportError: data-dependent shape" in bare


def test_no_heldout_test_or_thresholdout_value_in_any_prompt(server, tmp_path):
    sentinels = {"heldout_bpb": 3.14159265, "test_bpb": 2.71828182, "thresholdout": 1.41421356,
                 "heldout_delta": -0.0577215664}
    secret_texts = ["CANARY-PHRASE-XYZZY", "probe-internal-plugh"]

    class StrictRow(dict):
        read = set()

        def __getitem__(self, key):
            StrictRow.read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            StrictRow.read.add(key)
            return super().get(key, default)

    rows = [StrictRow(child=f"c{i:011d}", operator="llm_mutation", idea=f"idea {i}", delta_val_bpb=-0.002,
                      status="ok", **sentinels, probes={"canary": secret_texts[0], "detail": secret_texts[1]})
            for i in range(5)]
    ctx = OperatorContext(history=tuple(rows), memory="keep the warmdown", noise_floor=0.003)
    run = Run(server, tmp_path)
    server.default = lr_edit_answer
    a, b = parent(), parent(TINY.replace("DEPTH = 2", "DEPTH = 3"), bpb=1.99)
    LLMMutation(run.client)([a], random.Random(0), ctx)
    LLMCrossover(run.client)([a, b], random.Random(0), context=ctx)
    summarize(run.client, rows, previous="old note")
    assert StrictRow.read <= set(HISTORY_KEYS)
    forms = set(secret_texts)
    for value in sentinels.values():
        forms |= {repr(value), f"{value:.6f}", f"{value:.4f}", f"{value:.3f}", f"{value:+.4f}", f"{value:.3g}"}
    assert not any(form in TINY for form in forms)  # the check below means something
    assert len(server.requests) == 3
    for request in server.requests:
        body = json.dumps(request)
        for form in forms:
            assert form not in body, f"{form} leaked into a prompt"


def test_api_key_in_no_file_under_the_run_directory(tmp_path):
    with LLMServer(default=lr_edit_answer) as server:
        run = Run(server, tmp_path, max_retries=1)
        server.script(unauthorized(echo_key=True))  # a server that repeats the key in its error
        with pytest.raises(LLMUnavailable):
            LLMMutation(run.client)([parent()], random.Random(0))
        server.script(garbage(), "IDEA: x\n" + block("NOPE", "x"))  # garbage, then a broken edit and its repair
        child = LLMMutation(run.client)([parent()], random.Random(0))
        (tmp_path / "children").mkdir()
        (tmp_path / "children" / f"{child.id}.py").write_text(child.source + "\n# " + child.rationale)
        note = summarize(run.client, [{"child": child.id, "operator": "llm_mutation", "idea": "x",
                                       "delta_val_bpb": 0.0, "status": "ok"}])
        (tmp_path / "memory.txt").write_text(note)
        assert server.authorizations[0] == f"Bearer {KEY}"  # it was sent, as it must be
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 8
    for path in files:
        assert KEY.encode() not in path.read_bytes(), f"the API key is in {path}"


def test_summarize_writes_the_run_note(server, tmp_path):
    run = Run(server, tmp_path)
    server.script(answer("  What worked: lr 2e-3.\nWhat did not: depth 4.\nWhat to try next: warmdown.  "))
    rows = [{"child": "abc123abc123", "operator": "llm_mutation", "idea": "depth 4", "delta_val_bpb": 0.02,
             "status": "ok"}]
    note = summarize(run.client, rows, previous="earlier note")
    assert note == "What worked: lr 2e-3.\nWhat did not: depth 4.\nWhat to try next: warmdown."
    prompt = server.prompts()[0]
    assert "depth 4" in prompt and "+0.0200" in prompt and "earlier note" in prompt
    assert run.records[0]["purpose"] == "summary"


def test_default_answer_serves_any_tiny_cpu_prompt(tmp_path):
    """The server default the end-to-end `evo run` test relies on."""
    with LLMServer(default=lr_edit_answer) as server:
        run = Run(server, tmp_path)
        p = parent()
        for _ in range(4):
            child = LLMMutation(run.client)([p], random.Random(0))
            assert child.source != p.genome.source
            assert child.source.replace(child.source.split("LEARNING_RATE = ")[1].split("\n")[0], "") == \
                p.genome.source.replace(p.genome.source.split("LEARNING_RATE = ")[1].split("\n")[0], "")
            p = parent(child.source)
        child = LLMCrossover(run.client)([parent(), p], random.Random(0))
        assert child.source not in (TINY, p.genome.source)
        assert "What worked" in summarize(run.client, [])


def _study_context():
    from evo.operators.space import knob_space
    from evo.operators.studies import Study, Trial

    space, own = knob_space(TINY)
    lower = {**own, "LEARNING_RATE": 0.002}
    trials = (Trial("seed", own, 1.95, 3, val_mean=1.95), Trial("c1", lower, 1.90, 2, val_mean=1.90),
              Trial("c2", {**own, "WIDTH": 512}, None, 1, failure="out of memory"))
    return OperatorContext(noise_floor=0.004, study=Study("s", space, trials, noise_floor=0.004))


def test_the_mutation_prompt_shows_the_knob_study_and_a_knobs_answer_becomes_a_checked_child(server, tmp_path):
    run = Run(server, tmp_path)
    server.script(answer("IDEA: a higher learning rate, a longer warmdown\nRATIONALE: the study's best moved up.\n"
                         "KNOBS: LEARNING_RATE=0.005, WARMDOWN_FRACTION=0.5"))
    child = LLMMutation(run.client)([parent(params=812_000, train_loss=1.234)], random.Random(0), _study_context())
    assert child.source == TINY.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 5e-3").replace(
        "WARMDOWN_FRACTION = 0.3", "WARMDOWN_FRACTION = 0.5")
    assert child.rationale.startswith("a higher learning rate")
    prompt = server.prompts()[0]
    assert "Knob study of this structure (3 trials, 2 with a val mean)" in prompt
    assert "LEARNING_RATE: 0.0001 .. 0.03 (log scale)" in prompt and "WIDTH: 32 .. 512 (powers of two)" in prompt
    assert "best: val_bpb 1.9000 +- 0.0057 over 2 eval(s): DEPTH=2, WIDTH=128" in prompt
    assert "trial: failed: out of memory: DEPTH=2, WIDTH=512" in prompt
    assert "CMA-ES mean after 0 update(s)" in prompt and "CMA-ES step per knob" in prompt
    assert "parameters (as the script printed them): 812,000" in prompt
    assert "final train loss (as the script printed it, nats per token): 1.2340" in prompt
    assert "KNOBS: NAME=value" in prompt


@pytest.mark.parametrize("knobs, why", [
    ("DROPOUT=0.1", "not knobs of this genome: DROPOUT"),
    ("LEARNING_RATE=__import__('os').system('id')", "not a list of NAME=value pairs with literal values"),
    ("LEARNING_RATE=0.003", "equal the parent's"),
])
def test_a_knobs_answer_outside_the_space_or_with_code_is_repaired_never_applied(server, tmp_path, knobs, why):
    run = Run(server, tmp_path)
    server.script(answer(f"IDEA: x\nRATIONALE: y\nKNOBS: {knobs}"), answer("IDEA: x\nRATIONALE: y\nKNOBS: DEPTH=3"))
    child = LLMMutation(run.client)([parent()], random.Random(0), _study_context())
    assert child.source == TINY.replace("DEPTH = 2", "DEPTH = 3")
    repair = server.requests[1]["messages"][-1]["content"]
    assert why in repair
