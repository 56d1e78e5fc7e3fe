#!/usr/bin/env python3
"""Structured output through the official `openai` Python client against a running
`smelt serve` with a real model (crates/cli/tests/serve.rs runs it on SmolLM2-135M-Instruct;
by hand:

    smelt serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8080 --api-key sk-x &
    .cache/venv/bin/python scripts/serve_structured_check.py http://127.0.0.1:8080/v1 sk-x MODEL

`response_format` json_schema (an object with required string, integer, enum and array
fields), greedy and sampled, plain and streamed: every answer parses and validates against the
schema (checked field by field here; `jsonschema` is not in the venv) and ends as "stop". The
client's own `chat.completions.parse` with a pydantic model (pydantic validates). json_object:
a JSON object. Bad schemas: 400 with `param` "response_format". Then the mask's cost from
/metrics and a plain stream's time per token beside plain and beside constrained requests (a
figure, not a check). Every check prints "ok: <what>"; the first failure raises (exit status 1).
"""
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import List, Literal

import openai
import pydantic

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "job": {"enum": ["engineer", "doctor", "teacher", "artist"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 4},
    },
    "required": ["name", "age", "job", "hobbies"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": SCHEMA}}
ASK = [
    {"role": "system", "content": "You answer in JSON."},
    {"role": "user", "content": "Describe a fictional person: name, age, job and hobbies."},
]


def validate(text):
    """`SCHEMA`, checked by hand: returns the parsed object or raises."""
    v = json.loads(text)
    assert isinstance(v, dict), text
    assert sorted(v) == ["age", "hobbies", "job", "name"], text
    assert isinstance(v["name"], str) and len(v["name"]) <= 40, text
    assert isinstance(v["age"], int) and not isinstance(v["age"], bool) and 0 <= v["age"] <= 130, text
    assert v["job"] in ("engineer", "doctor", "teacher", "artist"), text
    h = v["hobbies"]
    assert isinstance(h, list) and 1 <= len(h) <= 4 and all(isinstance(x, str) and len(x) <= 30 for x in h), text
    return v


class Person(pydantic.BaseModel):
    name: str
    age: int
    job: Literal["engineer", "doctor", "teacher", "artist"]
    hobbies: List[str]


def metric(base_url, key, name):
    root = base_url.rsplit("/v1", 1)[0]
    req = urllib.request.Request(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def main():
    base_url, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)

    def ok(what):
        print(f"ok: {what}", flush=True)

    def ask(stream=False, **kw):
        args = dict(model=model, messages=ASK, response_format=FORMAT, max_tokens=160, **kw)
        if not stream:
            r = client.chat.completions.create(**args)
            return r.choices[0].message.content, r.choices[0].finish_reason
        chunks = list(client.chat.completions.create(stream=True, **args))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    greedy, finish = ask(temperature=0)
    assert finish == "stop", (greedy, finish)
    print(f"   greedy: {greedy}")
    validate(greedy)
    ok("json_schema, greedy: parses, validates, finish_reason stop")
    streamed, finish = ask(stream=True, temperature=0)
    assert (streamed, finish) == (greedy, "stop"), (streamed, finish)
    ok("json_schema, streamed: the same text, finish_reason stop")
    for seed in range(3):
        text, finish = ask(temperature=0.9, seed=seed, stream=seed == 2)
        assert finish == "stop", (text, finish)
        validate(text)
        print(f"   seed {seed}: {text}")
    ok("json_schema, sampled (3 seeds, one streamed): each parses and validates")

    # The client's structured-output helper: pydantic builds the strict schema and validates.
    r = client.chat.completions.parse(model=model, messages=ASK, response_format=Person, max_tokens=160, temperature=0)
    p = r.choices[0].message.parsed
    assert isinstance(p, Person), r
    ok(f"chat.completions.parse with a pydantic model: {p!r}")

    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Return a JSON object with the keys city and country for Paris."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(text), dict), (text, r.choices[0])
    ok(f"json_object: {text}")

    for bad in [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ]:
        try:
            client.chat.completions.create(model=model, messages=ASK, response_format=bad, max_tokens=4)
            raise AssertionError(f"{bad} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == "response_format", e.body
    ok("unusable response_format: 400, param response_format")

    # The cost: mask time per constrained token (/metrics), and what four constrained requests
    # running beside a plain one do to its inter-token time.
    masks = metric(base_url, key, "smelt_structured_masks_total")
    micros = metric(base_url, key, "smelt_structured_mask_microseconds_total")
    ok(f"mask: {masks:.0f} masks, {micros / masks:.0f} µs each on average")

    # Four side requests of about the same length either way (the schema's question, 70 tokens
    # at most, sampled), with or without the schema; the plain stream's time per token is
    # measured while they run, twice each way, alternating.
    plain = dict(model=model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=40, temperature=0)

    def plain_tpot():
        first, n = None, 0
        for c in client.chat.completions.create(stream=True, **plain):
            if c.choices and c.choices[0].delta.content:
                first = first or time.time()
                n += 1
        return (time.time() - first) / max(n - 1, 1)

    def side(i, constrained):
        kw = dict(model=model, messages=ASK, max_tokens=70, temperature=0.9, seed=10 + i)
        if constrained:
            kw["response_format"] = FORMAT
        return client.chat.completions.create(**kw).usage.completion_tokens

    tpot = {False: [], True: []}
    for _ in range(2):
        for constrained in (False, True):
            with ThreadPoolExecutor(4) as pool:
                others = [pool.submit(side, i, constrained) for i in range(4)]
                time.sleep(0.5)
                tpot[constrained].append(plain_tpot())
                lengths = [o.result() for o in others]
            print(f"   beside 4 {'constrained' if constrained else 'plain'} requests of {lengths} tokens: "
                  f"{tpot[constrained][-1] * 1e3:.1f} ms per token")
    ok(
        "a plain stream's time per output token beside 4 plain / 4 constrained requests: "
        f"{min(tpot[False]) * 1e3:.1f} / {min(tpot[True]) * 1e3:.1f} ms (best of 2)"
    )


if __name__ == "__main__":
    main()
