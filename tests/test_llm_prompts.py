"""Prompt templates: the packaged brief, user briefs, template overrides, and what a prompt may contain."""
import pytest

from evo.genome import Genome, OperatorContext, ParentInfo, SlotFacts
from evo.llm_config import LLMConfig
from evo.llm.prompts import PromptBook, history_table, metrics_text
from gpt.errors import UserError

SOURCE = "LR = 3e-3\nprint('steps: 10')\n"


def info(**kw):
    return ParentInfo(genome=Genome(SOURCE), **kw)


def test_packaged_brief_covers_goal_contract_limits_and_simplicity():
    brief = PromptBook().brief
    for needle in ("val_bpb", "fixed wall-clock budget", "run.train_batches", "run.time_left()", "run.submit(model)",
                   "torch.export", "OFF LIMITS", "the data, the seed, the clock and the scoring", "SIMPLICITY",
                   "noise floor"):
        assert needle in brief


def test_mutation_messages():
    book = PromptBook()
    messages = book.mutation(info(mean_val_bpb=1.5, n_evals=1, train_seconds=30.0), [], None, noise_floor=0.002)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert SOURCE.strip() in user and "mean val_bpb: 1.5000 over 1 evaluation\n" in user
    assert "noise floor: 0.0020" in user and "(no children yet)" in user and "(no notes yet)" in user
    assert "<<<<<<< SEARCH" in user and "steps:" not in metrics_text(info())  # steps only when known
    assert "FAILED" not in user


def test_the_prompt_states_the_slot_the_parent_throughput_and_what_each_child_did_against_its_parent():
    slot = SlotFacts(budget_s=300.0, device="cuda", threads=0, slots=8, corpus="hf", tokenizer="bpe",
                     vocab_size=8192, train_tokens=123_456_789, train_documents=4321)
    parent = info(mean_val_bpb=1.5, n_evals=3, train_seconds=300.0, steps=1200)
    history = [{"child": "c1", "operator": "llm_mutation", "idea": "muon", "delta_val_bpb": -0.02, "n_evals": 2,
                "status": "confirmed"},
               {"child": "c2", "operator": "knob_mutation", "idea": "lr", "delta_val_bpb": -0.01, "n_evals": 2,
                "status": "not confirmed"}]
    for messages in (PromptBook().mutation(parent, history, None, 0.004, slot),
                     PromptBook().crossover(parent, info(mean_val_bpb=1.6), history, None, 0.004, slot)):
        user = messages[1]["content"]
        assert "training budget per slot: 300 s of wall clock on cuda (8 slots in parallel)" in user
        assert "corpus: hf, tokenizer bpe (vocabulary 8192), 123,456,789 train tokens in 4,321 documents" in user
        assert "throughput: 4.00 steps per train second" in user
        assert "val_bpb vs parent" in user and "confirmed" in user and "not confirmed" in user
        assert "|     2 |" in user  # each child's number of evaluations
    unknown = PromptBook().mutation(parent, [], None)[1]["content"]
    assert "(not given: assume the script's own settings fit the slot)" in unknown


def test_metrics_without_values():
    assert metrics_text(info()) == "mean val_bpb: n/a over 0 evaluations"


def test_history_table_reads_only_public_keys():
    rows = [{"child": "0123456789abcdef", "operator": "llm_crossover", "idea": "a\nvery   long idea " + "x" * 200,
             "delta_val_bpb": 0.0123, "status": "ok", "heldout_bpb": 9.87654},
            {"child": "b", "operator": "knob", "idea": None, "delta_val_bpb": None, "status": "failed"}]
    table = history_table(rows)
    lines = table.splitlines()
    assert len(lines) == 3 and "9.87" not in table
    assert lines[1].startswith("0123456789ab | llm_crossover") and "+0.0123" in lines[1] and "…" in lines[1]
    assert "a very long idea" in lines[1] and lines[2].split("|")[2].strip() == "-"


def test_user_brief_extends_or_replaces(tmp_path):
    mine = tmp_path / "brief.md"
    mine.write_text("Try Muon. Costs $5 a run.\n")
    extended = PromptBook(brief=mine).brief
    assert extended.startswith(PromptBook().brief) and extended.endswith("FROM THE PERSON RUNNING THIS SEARCH\n"
                                                                       "Try Muon. Costs $5 a run.")
    assert PromptBook(brief=mine, brief_mode="replace").brief == "Try Muon. Costs $5 a run."
    config = LLMConfig.from_dict({"brief": str(mine), "brief_mode": "replace"})
    assert PromptBook.from_config(config).brief == "Try Muon. Costs $5 a run."


def test_prompts_dir_overrides_file_by_file(tmp_path):
    (tmp_path / "mutate.txt").write_text("Make it faster for $$1.\n$parent_source\n$answer_format")
    (tmp_path / "brief.txt").write_text("You optimize scripts ($ costs are fine).")
    book = PromptBook(prompts_dir=tmp_path)
    system, user = book.mutation(info(), [], None)
    assert system["content"] == "You optimize scripts ($ costs are fine)."
    assert user["content"].startswith("Make it faster for $1.\nLR = 3e-3")
    assert "RESULTS OF A" in book.crossover(info(), info(), [], None)[1]["content"]  # packaged crossover.txt


@pytest.mark.parametrize("text, needle", [
    ("$parent_source $heldout_bpb", "unknown placeholder $heldout_bpb"),
    ("costs $5", "write $$ for a literal $"),
])
def test_bad_templates_fail_at_start(tmp_path, text, needle):
    (tmp_path / "mutate.txt").write_text(text)
    with pytest.raises(UserError) as err:
        PromptBook(prompts_dir=tmp_path)
    assert needle in str(err.value) and "mutate.txt" in str(err.value)


def test_crossover_diff_and_identical_parents():
    a, b = info(mean_val_bpb=1.0), ParentInfo(genome=Genome(SOURCE.replace("3e-3", "1e-3")), mean_val_bpb=1.1)
    user = PromptBook().crossover(a, b, [], "note")[1]["content"]
    assert "-LR = 3e-3\n+LR = 1e-3" in user and "note" in user
    assert "(the two scripts are identical)" in PromptBook().crossover(a, a, [], None)[1]["content"]


def test_repair_and_summary():
    book = PromptBook()
    assert "edit block 1: nope" in book.repair("edit block 1: nope")
    messages = book.summary([{"child": "c", "operator": "knob", "idea": "i", "delta_val_bpb": -0.5, "status": "ok"}],
                            "old")
    assert "latest 1 children" in messages[1]["content"] and "-0.5000" in messages[1]["content"]


def test_operator_context_gives_recent_history_memory_and_noise_floor():
    ctx = OperatorContext(history=tuple({"child": str(i)} for i in range(5)), memory="m", noise_floor=0.1)
    assert [r["child"] for r in ctx.recent_history(2)] == ["3", "4"] and ctx.recent_history(0) == []
    assert len(ctx.recent_history(99)) == 5 and (ctx.memory, ctx.noise_floor) == ("m", 0.1)
    empty = OperatorContext()
    assert (empty.recent_history(10), empty.memory, empty.noise_floor) == ([], None, None)
