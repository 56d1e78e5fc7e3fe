#!/usr/bin/env node
// Drives a running `smelt serve` with the official `openai` npm package (openai-node), the
// other judge of the wire format beside the Python client (scripts/serve_openai_check.py, whose
// checks this mirrors). Run by crates/cli/tests/serve.rs (which starts the server on a free
// port, installs the package with scripts/node_openai.sh and skips loudly when it cannot), or
// by hand:
//
//     smelt serve --model DIR --port 8080 --api-key sk-x &
//     scripts/node_openai.sh && node scripts/serve_openai_check.mjs http://127.0.0.1:8080/v1 sk-x MODEL '{}'
//
// The package is loaded from $SMELT_OPENAI_JS (its folder, as scripts/node_openai.sh prints
// it), by default .cache/node/node_modules/openai. The last argument (optional) is JSON with
// what `smelt generate` gave for the same prompts (greedy):
// {"prompt": P, "max_tokens": N, "text": T, "chat_user": U, "chat_text": C}; each key is optional.
// The key "-" means a server without --api-key (the 401 check is then left out).
// Every check prints "ok: <what>"; the first failure prints "FAIL: <check>: <why>" and exits 1;
// all passing ends with a "PASS: ..." line.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = process.env.SMELT_OPENAI_JS || join(here, '..', '.cache', 'node', 'node_modules', 'openai');

/** The package's ES module entry, from its package.json `exports` (a folder cannot be imported). */
async function loadClient(dir) {
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  let e = pkg.exports?.['.'] ?? pkg.module ?? pkg.main;
  while (e && typeof e === 'object') e = e.import ?? e.default;
  if (typeof e !== 'string') throw new Error(`${dir}/package.json names no ES module entry`);
  return { mod: await import(pathToFileURL(join(dir, e)).href), version: pkg.version };
}

const [baseURL, key, model, expectArg] = process.argv.slice(2);
if (!baseURL || !key || !model) {
  console.error('usage: node scripts/serve_openai_check.mjs BASE_URL KEY MODEL [EXPECT_JSON]');
  process.exit(2);
}
const expect = JSON.parse(expectArg || '{}');
let current = 'loading the openai package';
let passed = 0;

function fail(e) {
  const why = e?.stack ?? String(e);
  console.log(`FAIL: ${current}: ${why}`);
  process.exit(1);
}
process.on('unhandledRejection', fail);

/** Runs one named check; the first failure ends the script naming it. */
async function check(name, fn) {
  current = name;
  try {
    const extra = await fn();
    passed += 1;
    console.log(`ok: ${name}${extra ? ` (${extra})` : ''}`);
  } catch (e) {
    fail(e);
  }
}

/** `fn` must throw the client's `cls` error with this status; returns the error. */
async function rejects(fn, cls, status, what) {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${e?.constructor?.name}: ${e}`);
    assert.ok(e instanceof OpenAI.APIError, `${what}: not an APIError`);
    assert.equal(e.status, status, `${what}: status`);
    assert.equal(typeof e.error?.message, 'string', `${what}: error.message`);
    assert.ok(e.error.message.length > 0, `${what}: empty error.message`);
    return e;
  }
  throw new assert.AssertionError({ message: `${what} was accepted` });
}

function isInt(x) {
  return Number.isInteger(x) && x >= 0;
}

/** OpenAI's usage object: integer fields, total = prompt + completion. */
function checkUsage(u, what) {
  assert.ok(u && typeof u === 'object', `${what}: no usage`);
  for (const f of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    assert.ok(isInt(u[f]), `${what}: usage.${f} = ${JSON.stringify(u[f])} is not an integer`);
  }
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}: total_tokens`);
  if (u.prompt_tokens_details != null) {
    assert.ok(isInt(u.prompt_tokens_details.cached_tokens), `${what}: cached_tokens`);
  }
}

/** Collects a stream's chunks (the client's async iterator; it ends at `data: [DONE]`). */
async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

/** A value of the server's /metrics (Prometheus text). */
async function metric(name) {
  const root = baseURL.replace(/\/v1\/?$/, '');
  const r = await fetch(`${root}/metrics`, { headers: key === '-' ? {} : { Authorization: `Bearer ${key}` } });
  const text = await r.text();
  for (const line of text.split('\n')) {
    if (line.startsWith(name + ' ')) return Number(line.split(/\s+/)[1]);
  }
  throw new Error(`${name} not in /metrics:\n${text}`);
}

const { mod, version } = await loadClient(pkgDir).catch(fail);
const OpenAI = mod.OpenAI;
const client = new OpenAI({ baseURL, apiKey: key === '-' ? 'none' : key, maxRetries: 0, timeout: 120_000 });
const prompt = expect.prompt ?? 'Hello';
const n = expect.max_tokens ?? 8;
const user = expect.chat_user ?? 'Hi';
const msgs = [{ role: 'user', content: user }];

await check('models.list', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.deepEqual(models.map((m) => m.id), [model]);
  const [m] = models;
  assert.equal(m.object, 'model');
  assert.ok(isInt(m.created) && typeof m.owned_by === 'string', JSON.stringify(m));
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
});

// Completions: greedy equals `smelt generate`, usage and finish_reason exact.
let completion;
await check('completions (greedy = smelt generate, usage, finish_reason)', async () => {
  const c = await client.completions.create({ model, prompt, max_tokens: n, temperature: 0 });
  completion = c;
  assert.equal(c.object, 'text_completion');
  assert.ok(c.id.startsWith('cmpl-'), c.id);
  assert.ok(isInt(c.created) && c.model === model, JSON.stringify(c));
  assert.equal(c.choices.length, 1);
  const ch = c.choices[0];
  assert.equal(ch.index, 0);
  assert.equal(typeof ch.text, 'string');
  if ('text' in expect) assert.equal(ch.text, expect.text);
  checkUsage(c.usage, 'completions');
  assert.ok(c.usage.completion_tokens <= n);
  assert.equal(ch.finish_reason, c.usage.completion_tokens === n ? 'length' : 'stop');
});

await check('completions stream', async () => {
  const parts = await collect(
    await client.completions.create({ model, prompt, max_tokens: n, temperature: 0, stream: true }),
  );
  const ch = completion.choices[0];
  assert.equal(parts.map((p) => p.choices[0]?.text ?? '').join(''), ch.text);
  assert.equal(new Set(parts.map((p) => p.id)).size, 1);
  assert.equal(parts.at(-1).choices[0].finish_reason, ch.finish_reason);
  assert.ok(parts.slice(0, -1).every((p) => p.choices[0].finish_reason == null));
});

// Chat, plain and streamed with usage.
let reply;
await check('chat.completions (greedy = smelt generate --chat, usage)', async () => {
  const r = await client.chat.completions.create({ model, messages: msgs, max_completion_tokens: n, temperature: 0 });
  reply = r;
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.id.startsWith('chatcmpl-'), r.id);
  assert.ok(isInt(r.created) && r.model === model, JSON.stringify(r));
  const m = r.choices[0].message;
  assert.equal(m.role, 'assistant');
  assert.equal(typeof m.content, 'string');
  if ('chat_text' in expect) assert.equal(m.content, expect.chat_text);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
  checkUsage(r.usage, 'chat');
  assert.ok(r.usage.completion_tokens <= n);
});

await check('chat stream (role first, one id, finish_reason last, usage chunk, [DONE])', async () => {
  const args = {
    model,
    messages: msgs,
    max_completion_tokens: n,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
  const chunks = await collect(await client.chat.completions.create(args));
  assert.ok(chunks.length >= 2, `${chunks.length} chunks`);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  const finish = withChoices.map((c) => c.choices[0].finish_reason);
  assert.equal(finish.at(-1), reply.choices[0].finish_reason);
  assert.ok(finish.slice(0, -1).every((f) => f == null), JSON.stringify(finish));
  assert.equal(withChoices.map((c) => c.choices[0].delta.content ?? '').join(''), reply.choices[0].message.content);
  // The usage chunk: last, no choices, the same counts as the plain request; `usage: null` before.
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  checkUsage(last.usage, 'stream usage');
  const { prompt_tokens, completion_tokens, total_tokens } = reply.usage;
  assert.deepEqual(
    [last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens],
    [prompt_tokens, completion_tokens, total_tokens],
  );
  assert.ok(chunks.slice(0, -1).every((c) => c.usage == null));
  // The client stops reading at [DONE] without saying so: the raw body ends with it.
  const raw = await (await client.chat.completions.create(args).asResponse()).text();
  assert.ok(raw.endsWith('data: [DONE]\n\n'), JSON.stringify(raw.slice(-200)));
});

// n choices, each with its log-probabilities: one entry per completion token.
await check('completions n = 2 with logprobs, seeded choices reproducible', async () => {
  const args = { model, prompt: 'Once', max_tokens: 6, temperature: 1, seed: 5, n: 2 };
  const c = await client.completions.create({ ...args, logprobs: 2 });
  assert.deepEqual(c.choices.map((ch) => ch.index), [0, 1]);
  checkUsage(c.usage, 'n = 2');
  let tokens = 0;
  for (const ch of c.choices) {
    const lp = ch.logprobs;
    tokens += lp.tokens.length;
    const lens = [lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset].map((a) => a.length);
    assert.ok(lens.every((l) => l === lens[0]), JSON.stringify(lens));
    assert.ok(lp.tokens.every((t) => typeof t === 'string'));
    assert.ok(lp.token_logprobs.every((v) => typeof v === 'number' && v <= 0), JSON.stringify(lp.token_logprobs));
    assert.ok(lp.text_offset.every(isInt), JSON.stringify(lp.text_offset));
    for (const t of lp.top_logprobs) {
      const vs = Object.values(t);
      assert.ok(vs.length >= 1 && vs.length <= 2 && vs.every((v) => v <= 0), JSON.stringify(t));
    }
    assert.ok(['stop', 'length'].includes(ch.finish_reason));
  }
  assert.equal(tokens, c.usage.completion_tokens);
  const again = await client.completions.create(args);
  assert.deepEqual(
    again.choices.map((ch) => ch.text),
    c.choices.map((ch) => ch.text),
  );
});

await check('chat logprobs (content[].token/logprob/bytes/top_logprobs; greedy = top)', async () => {
  const r = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'Hi' }],
    max_tokens: 5,
    temperature: 0,
    logprobs: true,
    top_logprobs: 3,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(Array.isArray(t.bytes) && t.bytes.every(isInt), JSON.stringify(t));
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(Math.abs(Math.max(...t.top_logprobs.map((x) => x.logprob)) - t.logprob) < 1e-5, JSON.stringify(t));
  }
});

// A stop string: the text ends before it, and it is never emitted.
const text = [...completion.choices[0].text]; // code points, as the Python check slices
if (text.length >= 4) {
  const stop = text.slice(2, 4).join('');
  const whole = text.join('');
  const want = whole.slice(0, whole.indexOf(stop));
  await check(`stop ${JSON.stringify(stop)} (plain and streamed)`, async () => {
    const args = { model, prompt, max_tokens: n, temperature: 0, stop: [stop] };
    const s = await client.completions.create(args);
    assert.deepEqual([s.choices[0].text, s.choices[0].finish_reason], [want, 'stop']);
    const parts = await collect(await client.completions.create({ ...args, stream: true }));
    const got = parts.map((p) => p.choices[0]?.text ?? '').join('');
    assert.deepEqual([got, parts.at(-1).choices[0].finish_reason], [want, 'stop']);
  });
}

// A client that leaves mid-stream (breaking out of the loop aborts the request): its
// generation ends and its KV blocks go back to the pool.
await check('client abort mid-stream frees its blocks (smelt_kv_blocks_used back to 0)', async () => {
  const s = await client.completions.create({
    model,
    prompt: 'Leaving',
    max_tokens: 4000,
    temperature: 1,
    seed: 1,
    stream: true,
  });
  let i = 0;
  for await (const _ of s) if (++i === 3) break;
  const t0 = Date.now();
  while ((await metric('smelt_requests_running')) > 0 || (await metric('smelt_kv_blocks_used')) > 0) {
    assert.ok(Date.now() - t0 < 60_000, 'the abandoned request still holds blocks');
    await new Promise((r) => setTimeout(r, 50));
  }
});

// Concurrent streaming clients, seeded: every stream is whole and equals its request alone.
await check('32 concurrent streaming chats, each whole and equal to its request alone', async () => {
  const one = async (i) => {
    const args = {
      model,
      messages: [{ role: 'user', content: `Client ${i}: tell me something.` }],
      max_tokens: 12 + (i % 7),
      temperature: 0.8,
      seed: i,
    };
    const chunks = await collect(
      await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } }),
    );
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1, `client ${i}`);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant', `client ${i}`);
    const finish = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].finish_reason);
    assert.ok(['stop', 'length'].includes(finish.at(-1)) && finish.slice(0, -1).every((f) => f == null));
    const text = chunks
      .filter((c) => c.choices.length)
      .map((c) => c.choices[0].delta.content ?? '')
      .join('');
    return { args, text, usage: chunks.at(-1).usage };
  };
  const results = await Promise.all(Array.from({ length: 32 }, (_, i) => one(i)));
  const peak = await metric('smelt_batch_size_max');
  for (const { args, text, usage } of results) {
    const alone = await client.chat.completions.create(args);
    assert.equal(alone.choices[0].message.content, text, JSON.stringify(args));
    assert.equal(alone.usage.completion_tokens, usage.completion_tokens, JSON.stringify(args));
  }
  return `largest batch ${peak}`;
});

// Errors arrive as the client's typed exceptions, with OpenAI's error body.
await check('errors (404 unknown model, 400 invalid field value: the client raises typed APIErrors)', async () => {
  const nf = await rejects(
    () => client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 }),
    mod.NotFoundError,
    404,
    'an unknown model',
  );
  assert.equal(nf.code, 'model_not_found');
  const bad = await rejects(
    () => client.completions.create({ model, prompt: 'x', max_tokens: 1, temperature: 5 }),
    mod.BadRequestError,
    400,
    'temperature 5',
  );
  assert.equal(bad.param, 'temperature');
  assert.equal(typeof bad.type, 'string');
  // The same from a stream request: the status comes before any chunk.
  await rejects(
    () => client.chat.completions.create({ model, messages: msgs, max_tokens: 1, n: 0, stream: true }),
    mod.BadRequestError,
    400,
    'n 0 (streamed)',
  );
});

if (key !== '-') {
  await check('api key (401 AuthenticationError on a wrong key)', async () => {
    const wrong = new OpenAI({ baseURL, apiKey: 'sk-wrong', maxRetries: 0, timeout: 30_000 });
    const e = await rejects(() => wrong.models.list(), mod.AuthenticationError, 401, 'a wrong key');
    assert.equal(e.code, 'invalid_api_key');
  });
}

console.log(`PASS: openai-node ${version} (${passed} checks) against ${baseURL} on Node ${process.versions.node}`);
