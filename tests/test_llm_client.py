"""The LLM client against a real HTTP server, through the real `openai` client: faults, retries,
cost, budget, model choice, and the call journal."""
import json
import random
import time

import pytest

from evo.genome import OperatorFailure
from evo.llm.client import BudgetExhausted, InvalidAnswer, LLMClient, LLMUnavailable, parse_retry_after
from evo.llm_config import LLMConfig
from llm_server import (LLMServer, Reply, answer, empty, garbage, hang, rate_limited, server_error, truncated,
                        unauthorized)

KEY_ENV = "EVO_TEST_LLM_KEY"
KEY = "sk-test-7f3a9c1e5b2d8f4a6c0e"
MESSAGES = [{"role": "system", "content": "brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def make(server, tmp_path, models=None, environ=None, client_seed=0, **cfg):
    models = models or [{"model": "m1"}]
    d = {"max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 2.0, **cfg,
         "models": [{"base_url": server.base_url, "api_key_env": KEY_ENV, "timeout_s": 5.0, **m} for m in models]}
    records = []
    client = LLMClient(LLMConfig.from_dict(d), tmp_path, records.append, random.Random(client_seed),
                       environ={KEY_ENV: KEY} if environ is None else environ)
    return client, records


def child_rng(seed, index):
    """A child's own stream, as the breeder derives it from the run seed and the proposal index."""
    return random.Random(f"{seed}:{index}")


THREE = [{"model": "a", "weight": 2.0, "price_in_per_m": 0.5}, {"model": "b", "weight": 1.0, "price_in_per_m": 2.0},
         {"model": "c", "weight": 1.0, "price_in_per_m": 8.0}]
GAIN = {"a": 0.001, "b": 0.004, "c": 0.002}


def gain(model, index):
    return GAIN[model] * (index % 3)  # every third child of any model improves nothing


def proposals(client, seed, indices):
    """Children `indices` of a run: each call draws its model from the child's stream, then the
    model is rewarded; returns the models chosen."""
    chosen = []
    for i in indices:
        done = client.complete(MESSAGES, "llm_mutation", rng=child_rng(seed, i))
        client.reward(done.model, gain(done.model, i))
        chosen.append(done.model)
    return chosen


def test_ok_call_costs_and_journal(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 2.5, "price_out_per_m": 10.0,
                                               "temperature": 0.3, "max_tokens": 77}])
    server.script(answer("IDEA: hi", prompt_tokens=1234, completion_tokens=567))
    done = client.complete(MESSAGES, purpose="llm_mutation")
    assert done.text == "IDEA: hi" and done.model == "m1"
    assert (done.prompt_tokens, done.completion_tokens) == (1234, 567)
    assert done.cost_usd == pytest.approx(1234 * 2.5e-6 + 567 * 10e-6)
    assert client.spent_usd == pytest.approx(done.cost_usd)
    body = server.requests[0]
    assert body["model"] == "m1" and body["messages"] == MESSAGES
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77
    assert server.authorizations == [f"Bearer {KEY}"]
    [r] = records
    assert r["status"] == "ok" and r["purpose"] == "llm_mutation" and r["call_id"] == done.call_id
    assert (r["prompt_tokens"], r["completion_tokens"]) == (1234, 567) and r["cost_usd"] == done.cost_usd
    assert r["latency_s"] >= 0 and r["created"] <= time.time()
    assert "brief" in (tmp_path / r["prompt_path"]).read_text() and "hello there" in (tmp_path / r["prompt_path"]).read_text()
    assert (tmp_path / r["response_path"]).read_text() == "IDEA: hi"
    json.dumps(records)  # journal-ready


def test_rate_limit_honours_retry_after(server, tmp_path):
    client, records = make(server, tmp_path)
    server.script(rate_limited(1), answer("fine"))
    assert client.complete(MESSAGES, "x").text == "fine"
    assert server.arrivals[1] - server.arrivals[0] >= 0.95
    assert [r["status"] for r in records] == ["rate_limited", "ok"]
    assert records[0]["retry_after_s"] == 1.0 and records[0]["http_status"] == 429 and records[0]["wait_s"] == 1.0
    assert records[0]["prompt_path"] == records[1]["prompt_path"]  # one prompt file per completion


def test_retry_after_longer_than_max_backoff_drops_the_child(server, tmp_path):
    client, records = make(server, tmp_path, max_backoff_s=1.0)
    server.script(rate_limited(3600))
    with pytest.raises(LLMUnavailable, match="rate_limited") as err:
        client.complete(MESSAGES, "x")
    assert isinstance(err.value, OperatorFailure)
    assert len(server.requests) == 1 and "Retry-After 3600" in records[0]["error"]


def test_server_error_then_ok(server, tmp_path):
    client, records = make(server, tmp_path)
    server.script(server_error(500), server_error(503), answer("fine"))
    assert client.complete(MESSAGES, "x").text == "fine"
    assert [r["status"] for r in records] == ["server_error", "server_error", "ok"]
    assert [r["http_status"] for r in records] == [500, 503, 200]
    assert all(r["wait_s"] > 0 for r in records[:2])


def test_hang_past_timeout_is_retried(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "timeout_s": 0.4}])
    server.script(hang(5), answer("fine"))
    start = time.monotonic()
    assert client.complete(MESSAGES, "x").text == "fine"
    assert time.monotonic() - start < 3
    assert [r["status"] for r in records] == ["timeout", "ok"]
    assert records[0]["response_path"] is None


@pytest.mark.parametrize("reply, status", [
    (garbage(), "bad_response"),
    (garbage(b"not json at all", "text/plain"), "bad_response"),
    (garbage(b'{"object": "chat.completion"}'), "bad_response"),
    (empty(), "empty"),
    (truncated(), "truncated"),
])
def test_bad_answers_are_retried(server, tmp_path, reply, status):
    client, records = make(server, tmp_path)
    server.script(reply, answer("fine"))
    assert client.complete(MESSAGES, "x").text == "fine"
    assert [r["status"] for r in records] == [status, "ok"]
    assert records[0]["response_path"]  # the bad body is kept for a look


def test_faults_all_the_way_drop_the_child(server, tmp_path):
    client, records = make(server, tmp_path, max_retries=2)
    server.script(garbage(), server_error(502), truncated("IDEA: half"), answer("never asked"))
    with pytest.raises(LLMUnavailable) as err:
        client.complete(MESSAGES, "x")
    assert "after 3 attempt(s)" in str(err.value) and "truncated" in str(err.value)
    assert err.value.response == "IDEA: half" and len(err.value.call_ids) == 3
    assert [r["status"] for r in records] == ["bad_response", "server_error", "truncated"]
    assert server.pending == 1


def test_validate_rejections_are_retried(server, tmp_path):
    client, records = make(server, tmp_path)
    server.script(answer("no blocks here"), answer("<<<<<<< SEARCH"))

    def validate(text):
        if "SEARCH" not in text:
            raise InvalidAnswer("no edit block")

    assert client.complete(MESSAGES, "x", validate=validate).text == "<<<<<<< SEARCH"
    assert [r["status"] for r in records] == ["invalid", "ok"] and records[0]["error"] == "no edit block"


def test_client_errors_are_not_retried_and_the_key_is_scrubbed(server, tmp_path):
    client, records = make(server, tmp_path)
    server.script(unauthorized(echo_key=True), answer("never asked"))
    with pytest.raises(LLMUnavailable, match="client_error") as err:
        client.complete(MESSAGES, "x")
    assert len(server.requests) == 1 and records[0]["http_status"] == 401
    assert KEY not in str(err.value) and KEY not in err.value.response and "[redacted]" in records[0]["error"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_key_is_read_at_call_time(tmp_path):
    environ = {}
    with LLMServer(default=lambda request: answer("ok"), api_key="sk-second-key-0000000") as server:
        client, records = make(server, tmp_path, environ=environ)
        with pytest.raises(LLMUnavailable, match="EVO_TEST_LLM_KEY"):
            client.complete(MESSAGES, "x")  # unset: no request at all
        assert server.requests == [] and records[0]["status"] == "no_key"
        environ[KEY_ENV] = "sk-first-key-00000000"
        with pytest.raises(LLMUnavailable, match="401"):
            client.complete(MESSAGES, "x")
        environ[KEY_ENV] = "sk-second-key-0000000"
        assert client.complete(MESSAGES, "x").text == "ok"
        assert server.authorizations == ["Bearer sk-first-key-00000000", "Bearer sk-second-key-0000000"]


def test_no_key_needed_for_local_servers(server, tmp_path):
    client, _ = make(server, tmp_path, [{"model": "local", "api_key_env": ""}], environ={})
    server.script(answer("ok"))
    assert client.complete(MESSAGES, "x").text == "ok"


def test_budget_stops_llm_use(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 1000.0, "price_out_per_m": 1000.0}],
                           budget_usd=1.5)
    server.script(answer("a", prompt_tokens=500, completion_tokens=500),   # $1.00
                  answer("b", prompt_tokens=400, completion_tokens=400),   # $0.80 -> $1.80, over
                  answer("never asked"))
    client.complete(MESSAGES, "x")
    assert not client.budget_exhausted
    client.complete(MESSAGES, "x")
    assert client.budget_exhausted and client.spent_usd == pytest.approx(1.8)
    with pytest.raises(BudgetExhausted, match=r"budget of \$1\.50 reached") as err:
        client.complete(MESSAGES, "x")
    assert isinstance(err.value, OperatorFailure)
    assert len(server.requests) == 2 and len(records) == 2
    assert sum(r["cost_usd"] for r in records) == pytest.approx(client.spent_usd)


def test_budget_counts_failed_attempts_that_used_tokens(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 1.0, "price_out_per_m": 2.0}])
    server.script(truncated("IDEA: x"), answer("ok", prompt_tokens=10, completion_tokens=10))
    client.complete(MESSAGES, "x")
    served = server.served_usage
    expected = sum(u["prompt_tokens"] * 1e-6 + u["completion_tokens"] * 2e-6 for u in served)
    assert client.spent_usd == pytest.approx(expected) and records[0]["cost_usd"] > 0


def test_missing_usage_is_estimated(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 1.0, "price_out_per_m": 1.0}])
    server.script(Reply(text="some answer text", usage=False))
    done = client.complete(MESSAGES, "x")
    assert done.prompt_tokens > 0 and done.completion_tokens > 0 and records[0]["usage_estimated"]


def test_restore_and_usage(server, tmp_path):
    client, records = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 1.0}])
    server.script(answer("ok", prompt_tokens=1000, completion_tokens=1))
    client.complete(MESSAGES, "x")
    again, _ = make(server, tmp_path, [{"model": "m1", "price_in_per_m": 1.0}])
    again.restore(records)
    assert again.spent_usd == pytest.approx(client.spent_usd)
    assert again.usage()["m1"]["calls"] == 1 and again.usage()["m1"]["prompt_tokens"] == 1000
    server.script(answer("ok"))
    assert again.complete(MESSAGES, "x").call_id == "000002"  # call files are never overwritten


def test_weighted_choice(server, tmp_path):
    client, _ = make(server, tmp_path, [{"model": "a", "weight": 3.0}, {"model": "b", "weight": 1.0},
                                        {"model": "off", "weight": 0.0}])
    picks = [client.choose_model().model for _ in range(2000)]
    assert "off" not in picks and 0.7 < picks.count("a") / len(picks) < 0.8


def test_ucb_prefers_improvement_per_dollar(server, tmp_path):
    client, _ = make(server, tmp_path, [{"model": "cheap", "price_in_per_m": 0.1},
                                        {"model": "dear", "price_in_per_m": 10.0}], selection="ucb")
    first = {client.choose_model().model for _ in range(2)}
    assert first == {"cheap", "dear"} or len(first) == 1  # untried models go first
    server.script(*[answer("x", prompt_tokens=10000, completion_tokens=0)] * 2)
    cheap = client.complete(MESSAGES, "x", model="cheap")  # $0.001
    dear = client.complete(MESSAGES, "x", model="dear")  # $0.10
    assert cheap.cost_usd < dear.cost_usd
    client.reward("cheap", 0.01)
    client.reward("dear", 0.02)  # twice the improvement at a hundred times the price
    client.reward("unknown", 1.0)  # ignored
    picks = [client.choose_model().model for _ in range(50)]
    assert picks.count("cheap") == 50
    for _ in range(200):  # many rewards for cheap, none useful: exploration comes back to dear
        client.reward("cheap", 0.0)
    assert client.choose_model().model == "dear"


def test_ucb_tries_untried_models_with_fewest_calls_first(server, tmp_path):
    client, _ = make(server, tmp_path, [{"model": "a"}, {"model": "b"}], selection="ucb")
    server.script(answer("x"))
    client.complete(MESSAGES, "x", model="a")
    assert client.choose_model().model == "b"


def test_unavailable_model_earns_zero_reward(server, tmp_path):
    client, _ = make(server, tmp_path, max_retries=0)
    server.script(server_error(500))
    with pytest.raises(LLMUnavailable):
        client.complete(MESSAGES, "x")
    assert client.usage()["m1"]["rewards"] == 1 and client.usage()["m1"]["improvement"] == 0.0


@pytest.mark.parametrize("selection", ["weight", "ucb"])
def test_same_child_rngs_and_rewards_choose_the_same_models(tmp_path, selection):
    with LLMServer(default=lambda request: answer("ok", prompt_tokens=1000, completion_tokens=10)) as server:
        one, _ = make(server, tmp_path / "one", THREE, client_seed=1, selection=selection)
        two, _ = make(server, tmp_path / "two", THREE, client_seed=2, selection=selection)
        chosen = proposals(one, 7, range(12))
        assert proposals(two, 7, range(12)) == chosen  # the clients' own streams play no part
        assert len(set(chosen)) >= 2  # the draw decides something
        assert one.rng.getstate() == random.Random(1).getstate()  # nor are they drawn from
        if selection == "ucb":
            assert set(chosen[:3]) == {"a", "b", "c"}  # untried models first

        # interrupted after six children, resumed from the journaled calls and the replayed rewards
        before, records = make(server, tmp_path / "before", THREE, client_seed=3, selection=selection)
        head = proposals(before, 7, range(6))
        after, _ = make(server, tmp_path / "after", THREE, client_seed=4, selection=selection)
        after.restore(records)
        for i, model in enumerate(head):
            after.reward(model, gain(model, i))
        assert head + proposals(after, 7, range(6, 12)) == chosen


def test_without_an_rng_the_client_stream_decides(server, tmp_path):
    one, _ = make(server, tmp_path, THREE, client_seed=5)
    two, _ = make(server, tmp_path, THREE, client_seed=5)
    assert [one.choose_model().model for _ in range(20)] == [two.choose_model().model for _ in range(20)]


def test_retries_draw_nothing_from_the_child_rng(server, tmp_path):
    client, records = make(server, tmp_path, THREE)
    server.script(server_error(500), server_error(503), answer("fine"))
    rng, ref = child_rng(7, 0), child_rng(7, 0)
    done = client.complete(MESSAGES, "x", rng=rng)
    assert done.model == client.choose_model(ref).model and rng.getstate() == ref.getstate()
    assert [r["status"] for r in records] == ["server_error", "server_error", "ok"]
    assert all(r["wait_s"] > 0 for r in records[:2])


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after({"retry-after": future}) <= 31
