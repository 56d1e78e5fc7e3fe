#!/usr/bin/env python3
"""PyTorch + PEFT side of the CPU LoRA benchmark (docs/FINETUNE.md, "LoRA"): LoRA training steps
of a Hugging Face model folder in float32 (transformers, sdpa attention), r and targets as given,
AdamW over the adapter only, random token ids; the median of several timed steps after one
warm-up. Writes the (initial) adapter to --adapter-out so `smelt bench --adapter` times the
same shapes, and prints one JSON object.

  .cache/venv/bin/python bench/lora_cpu.py --model .cache/inputs/smollm2/hf --threads 2 \\
      --adapter-out /tmp/lora16
  target/release/smelt -t 2 bench --model .cache/inputs/smollm2/hf --adapter /tmp/lora16 \\
      --batch-size 4 --seq-len 256 --iters 3 --decode-tokens 1 --device cpu
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--seq-len", type=int, default=256)
p.add_argument("--iters", type=int, default=3)
p.add_argument("--r", type=int, default=16)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--adapter-out")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
model = get_peft_model(base, LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules="all-linear", task_type="CAUSAL_LM"))
if a.adapter_out:
    model.save_pretrained(a.adapter_out)
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, weight_decay=0.1)
v = base.config.vocab_size
x = torch.randint(0, v, (a.batch_size, a.seq_len))


def step():
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


step()
times, cpu = [], []
for _ in range(a.iters):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
tok = a.batch_size * a.seq_len
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": a.batch_size,
                  "seq_len": a.seq_len, "r": a.r, "train_tok_s": tok / statistics.median(times),
                  # CPU seconds of all threads per step, as `smelt bench`'s train_cpu_s.
                  "train_cpu_s": statistics.median(cpu)}))
