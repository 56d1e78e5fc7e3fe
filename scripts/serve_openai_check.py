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
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == r.usage.model_dump(), chunks[-1]
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


if __name__ == "__main__":
    main()
