#!/usr/bin/env python3
"""Drives a running `smelt serve` with the official `openai` Python client, the judge of the
wire format. Run by crates/cli/tests/serve.rs (which starts the server on a free port, installs
the client with `scripts/venv.sh openai==VERSION` and skips loudly when it cannot), or by hand:

    smelt serve --model DIR --port 8080 --api-key sk-x &
    .cache/venv/bin/python scripts/serve_openai_check.py http://127.0.0.1:8080/v1 sk-x MODEL '{}'

The last argument is JSON with what `smelt generate` gave for the same prompts (greedy):
{"prompt": P, "max_tokens": N, "text": T, "chat_user": U, "chat_text": C}; each key is optional.
Every check prints "ok: <what>"; the first failure raises (exit status 1).
"""
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai


def main():
    base_url, key, model, expect = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)

    def ok(what):
        print(f"ok: {what}", flush=True)

    ids = [m.id for m in client.models.list()]
    assert ids == [model], ids
    ok("models.list")

    # Completions: greedy equals `smelt generate`, usage and finish_reason exact.
    prompt, n = expect.get("prompt", "Hello"), expect.get("max_tokens", 8)
    c = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    ch = c.choices[0]
    if "text" in expect:
        assert ch.text == expect["text"], (ch.text, expect["text"])
    assert c.object == "text_completion" and c.id.startswith("cmpl-"), c
    assert c.usage.completion_tokens <= n and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert ch.finish_reason == ("length" if c.usage.completion_tokens == n else "stop"), c
    ok("completions (greedy = smelt generate, usage, finish_reason)")

    # Streaming completions join into the same text.
    parts = list(client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == ch.text
    assert len({p.id for p in parts}) == 1 and parts[-1].choices[0].finish_reason == ch.finish_reason
    ok("completions stream")

    # Chat, plain and streamed with usage.
    user = expect.get("chat_user", "Hi")
    msgs = [{"role": "user", "content": user}]
    r = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=n, temperature=0)
    reply = r.choices[0].message
    assert reply.role == "assistant" and r.object == "chat.completion", r
    if "chat_text" in expect:
        assert reply.content == expect["chat_text"], (reply.content, expect["chat_text"])
    ok("chat.completions (greedy = smelt generate --chat)")
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=msgs,
            max_completion_tokens=n,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    u, ru = chunks[-1].usage, r.usage
    assert chunks[-1].choices == [] and (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        ru.prompt_tokens,
        ru.completion_tokens,
        ru.total_tokens,
    ), chunks[-1]
    assert len({c.id for c in chunks}) == 1
    ok("chat stream (role first, finish_reason last, usage chunk)")

    # A stop string: the text ends before it, and it is never emitted.
    text = ch.text
    if len(text) >= 4:
        stop = text[2:4]
        want = text[: text.find(stop)]
        for stream in (False, True):
            s = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stop=[stop], stream=stream)
            if stream:
                s = list(s)
                got = "".join(p.choices[0].text for p in s if p.choices)
                finish = s[-1].choices[0].finish_reason
            else:
                got, finish = s.choices[0].text, s.choices[0].finish_reason
            assert (got, finish) == (want, "stop"), (got, finish, want, stop)
        ok(f"stop {stop!r}")

    more_checks(client, model, base_url, key, ok)

    # Errors arrive as the client's typed exceptions.
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "temperature", e.body
    ok("errors (404 model, 400 field)")
    bad = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
    ok("api key (401 on a wrong key)")


def metric(base_url, key, name):
    """A value of the server's /metrics (Prometheus text)."""
    root = base_url.rsplit("/v1", 1)[0]
    req = urllib.request.Request(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def more_checks(client, model, base_url, key, ok):
    # Usage: a repeated prompt is served from the prefix cache. Blocks of 16 tokens; the
    # prompt's last 5 tokens are always computed; the first request's blocks stay cached.
    long = "The prefix cache keeps blocks of keys and values for prompts that share a beginning. " * 3
    a = client.completions.create(model=model, prompt=long, max_tokens=2, temperature=0)
    b = client.completions.create(model=model, prompt=long, max_tokens=2, temperature=0)
    want = (a.usage.prompt_tokens - 5) // 16 * 16
    assert a.usage.prompt_tokens_details.cached_tokens in (0, want), a.usage
    assert b.usage.prompt_tokens_details.cached_tokens == want > 0, (b.usage, want)
    assert b.choices[0].text == a.choices[0].text
    ok(f"usage.prompt_tokens_details.cached_tokens = {want} of {a.usage.prompt_tokens} on a repeated prompt")

    # n choices, each with its log-probabilities: one entry per completion token.
    c = client.completions.create(model=model, prompt="Once", max_tokens=6, temperature=1, seed=5, n=3, logprobs=2)
    assert [ch.index for ch in c.choices] == [0, 1, 2], c
    assert sum(len(ch.logprobs.tokens) for ch in c.choices) == c.usage.completion_tokens, c
    for ch in c.choices:
        lp = ch.logprobs
        assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(len(t) <= 2 and all(v <= 0 for v in t.values()) for t in lp.top_logprobs), lp
        assert all(v <= 0 for v in lp.token_logprobs), lp
    again = client.completions.create(model=model, prompt="Once", max_tokens=6, temperature=1, seed=5, n=3)
    assert [ch.text for ch in again.choices] == [ch.text for ch in c.choices], (again, c)
    ok("n = 3 with logprobs (completions shape), seeded choices reproducible")

    # Chat log-probabilities: greedy picks the top alternative.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, r
    for t in content:
        assert len(t.top_logprobs) == 3 and t.bytes is not None, t
        assert abs(max(x.logprob for x in t.top_logprobs) - t.logprob) < 1e-5, t
    ok("chat logprobs (content[].token/logprob/bytes/top_logprobs; greedy = top)")

    # Penalties are accepted and change a greedy answer that repeats.
    base = client.completions.create(model=model, prompt="the the the the", max_tokens=12, temperature=0)
    pen = client.completions.create(
        model=model, prompt="the the the the", max_tokens=12, temperature=0, frequency_penalty=2, presence_penalty=2
    )
    assert pen.usage.completion_tokens >= 1 and base.usage.completion_tokens >= 1
    ok(f"presence/frequency penalties ({base.choices[0].text!r} -> {pen.choices[0].text!r})")

    # A client that leaves mid-stream: its request ends and its KV blocks go back to the pool.
    s = client.completions.create(model=model, prompt="Leaving", max_tokens=4000, temperature=1, seed=1, stream=True)
    for i, _ in enumerate(s):
        if i == 2:
            break
    s.close()
    t0 = time.time()
    while metric(base_url, key, "smelt_requests_running") > 0 or metric(base_url, key, "smelt_kv_blocks_used") > 0:
        assert time.time() - t0 < 60, "the abandoned request still holds blocks"
        time.sleep(0.05)
    ok("client disconnect frees its blocks (smelt_kv_blocks_used back to 0)")

    # 64 concurrent streaming clients, seeded: every stream is whole (one id, finish_reason
    # last, usage that counts its tokens) and equals the same request made alone afterwards.
    def one(i):
        msgs = [{"role": "user", "content": f"Client {i}: tell me something."}]
        args = dict(model=model, messages=msgs, max_tokens=12 + i % 7, temperature=0.8, seed=i)
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        assert len({c.id for c in chunks}) == 1, i
        assert chunks[0].choices[0].delta.role == "assistant", i
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1]), (i, finish)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return args, text, chunks[-1].usage

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    peak = metric(base_url, key, "smelt_batch_size_max")
    for args, text, usage in results:
        alone = client.chat.completions.create(**args)
        assert alone.choices[0].message.content == text, (args, alone.choices[0].message.content, text)
        assert alone.usage.completion_tokens == usage.completion_tokens, (args, usage)
    ok(f"64 concurrent streaming clients, each whole and equal to its request alone (largest batch {peak:.0f})")


if __name__ == "__main__":
    main()
