"""The checks of tests/t_chat.sh (see there). usage: check.py REPO_ROOT (in a scratch dir, env
MOET, PY, TINY, MISTRAL, QWEN, LLAMA_CHECK, CHAT_JINJA_DIR and qwen-model/ made by the script)."""
import glob
import json
import os
import subprocess
import sys

import h5py
import numpy as np

ROOT = sys.argv[1]
MOET = os.environ["MOET"]
TINY_DIR = os.environ["TINY"]
TOKS = {  # tokenizer -> its bos / eos token texts, as Hugging Face's tokenizer_config names them
    "tiny": (TINY_DIR + "/tokenizer.json", "<s>", "</s>"),
    "mistral": (os.environ["MISTRAL"], "<s>", "</s>"),
    "qwen": (os.environ["QWEN"], None, "<|endoftext|>"),
}
CONVS = json.load(open(os.path.join(ROOT, "tests/chat/conversations.json")))
failures = []


def fail(msg):
    failures.append(msg)
    print("NOT OK  " + msg)


def moet(*args, stdin=None, ok=True):
    r = subprocess.run([MOET, *args], input=stdin, capture_output=True)
    if ok and r.returncode != 0:
        raise SystemExit(f"moet {' '.join(args)} failed: {r.stderr.decode()}")
    return r


def ids_of(line):
    return [int(x) for x in line.split()]


# ---- 1. moet's text = Hugging Face Jinja's text of the exported template
jobs, want = [], []
for tname, (tpath, bos, eos) in TOKS.items():
    for tpl in ("mistral", "chatml"):
        jinja = moet("tokenize", tpath, "--chat-jinja", tpl).stdout.decode()
        for ci, conv in enumerate(CONVS):
            for gen in (False, True):
                args = ["tokenize", tpath, "--chat", tpl, "--text"] + (["--generation-prompt"] if gen else [])
                r = moet(*args, stdin=json.dumps(conv).encode(), ok=False)
                if r.returncode != 0:  # mistral: roles out of order, or a reply asked after a reply
                    err = r.stderr.decode()
                    if tpl != "mistral" or ("where 'user' was due" not in err and "nothing to reply to" not in err):
                        fail(f"{tname}/{tpl}/conv {ci}/gen {gen}: moet refused: {err}")
                    continue
                jobs.append(dict(template=jinja, messages=conv, add_generation_prompt=gen, bos_token=bos,
                                 eos_token=eos))
                want.append((f"{tname}/{tpl}/conv {ci}/gen {gen}", json.loads(r.stdout), tpath, tpl, conv, gen))
json.dump(jobs, open("jobs.json", "w"))
out = subprocess.run(["node", os.path.join(ROOT, "tests/chat/render.mjs"), "jobs.json"], capture_output=True,
                     check=True).stdout.decode().splitlines()
assert len(out) == len(jobs), (len(out), len(jobs))
same = 0
for (name, mtext, tpath, tpl, conv, gen), line in zip(want, out):
    got = json.loads(line)
    if got.get("text") != mtext:
        fail(f"{name}: Jinja {got!r} != moet {mtext!r}")
    else:
        same += 1
print(f"ok   Jinja (@huggingface/jinja) = moet's text: {same}/{len(jobs)} renderings "
      f"(3 tokenizers x 2 templates x {len(CONVS)} conversations x add_generation_prompt false/true)")
assert len(jobs) >= 70, len(jobs)

# Qwen (byte-level, <|im_start|>/<|im_end|> special): the Jinja text tokenized whole = moet's ids
n = 0
for (name, mtext, tpath, tpl, conv, gen) in want:
    if not name.startswith("qwen/chatml"):
        continue
    whole = ids_of(moet("tokenize", tpath, stdin=mtext.encode()).stdout.decode())
    args = ["tokenize", tpath, "--chat", "chatml"] + (["--generation-prompt"] if gen else [])
    pieces = ids_of(moet(*args, stdin=json.dumps(conv).encode()).stdout.decode().splitlines()[0])
    if whole != pieces:
        fail(f"{name}: the Jinja text tokenized whole {whole} != moet's ids {pieces}")
    n += 1
print(f"ok   Qwen chatml: the rendered text tokenized whole gives moet's piece-by-piece ids ({n} renderings)")

# ---- 2. prep (training) and generate --chat-file (inference) give the same ids
def prep_vs_generate(model, tpl_flag, tpath, label):
    n = 0
    for ci, conv in enumerate(CONVS):
        if conv[-1]["role"] != "assistant" or not conv[-1]["content"]:
            continue
        d = f"prep-{label}-{ci}"
        open(f"{d}.jsonl", "w").write(json.dumps({"messages": conv}) + "\n")
        moet("prep", "--tokenizer", tpath, "--out", d, "--seq-len", "512", *tpl_flag, f"{d}.jsonl")
        with h5py.File(f"{d}/train-00000.h5") as h:
            toks, mask = h["tokens"][0].tolist(), h["loss_mask"][0].tolist()
        json.dump(conv[:-1], open(f"{d}.json", "w"))
        prompt = ids_of(moet("generate", model, "--chat-file", f"{d}.json", "--prompt-ids", *tpl_flag).stdout.decode())
        k = len(prompt)
        if toks[:k] != prompt or mask[k] != 1:
            fail(f"{label} conv {ci}: generate's prompt {prompt} is not the start of prep's document {toks[:k + 4]}"
                 f" (mask {mask[:k + 4]})")
        n += 1
    return n


n = prep_vs_generate(TINY_DIR, [], TOKS["tiny"][0], "tiny-mistral")
n += prep_vs_generate(TINY_DIR, ["--chat-template", "chatml"], TOKS["tiny"][0], "tiny-chatml")
n += prep_vs_generate(os.path.abspath("qwen-model"), [], TOKS["qwen"][0], "qwen")
print(f"ok   generate --chat-file --prompt-ids = the start of prep's document, token for token ({n} conversations, "
      "tiny mistral / chatml, Qwen chatml by default), the reply's first token a target")


# ---- 3. the template travels: shards -> trainer_state.json -> exports (HF, PEFT, merged, GGUF) -> llama.cpp
def jinja_of(tpath, tpl):
    return moet("tokenize", tpath, "--chat-jinja", tpl).stdout.decode()


qtok = TOKS["qwen"][0]
lines = [json.dumps({"messages": c}) for c in CONVS if any(m["role"] == "assistant" for m in c)]
open("qchat.jsonl", "w").write("\n".join(lines * 4) + "\n")
moet("prep", "--tokenizer", qtok, "--out", "qdata", "--seq-len", "64", "qchat.jsonl")
open("lora.yaml", "w").write(f"""run: {{name: qchat, dir: qrun}}
model: {{init_from: qwen-model}}
tokenizer: {qtok}
data: {{train: [qdata/train-*.h5], seq_len: 64}}
train: {{batch_size: 2, max_steps: 2, log_every: 1}}
optim: {{lr: 1e-3}}
lora: {{enabled: true, r: 2, alpha: 4, targets: [q_proj, v_proj]}}
""")
moet("train", "lora.yaml", "--quiet")
ck = "qrun/checkpoints/step_00000002"
st = json.load(open(ck + "/trainer_state.json"))
if st.get("chat_template") != "chatml":
    fail(f"trainer_state.json chat_template {st.get('chat_template')!r}, want chatml (the shards')")
conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Eden?"}]
want_ids = moet("tokenize", qtok, "--chat", "chatml", "--generation-prompt", stdin=json.dumps(conv).encode())
want_ids = ids_of(want_ids.stdout.decode().splitlines()[0])
got = ids_of(moet("generate", ck, "--chat", "Where is Eden?", "--system", "Be brief.", "--prompt-ids").stdout.decode())
if got != want_ids:
    fail(f"generate --chat on the LoRA checkpoint: {got} != {want_ids}")
qj, qm = jinja_of(qtok, "chatml"), jinja_of(qtok, "mistral")
for fmt in ("peft", "merged", "gguf"):
    moet("export", ck, f"ex-{fmt}", "--format", fmt)
for fmt in ("peft", "merged"):
    tc = json.load(open(f"ex-{fmt}/tokenizer_config.json"))
    if tc.get("chat_template") != qj:
        fail(f"{fmt} export: tokenizer_config.json chat_template is not the run's chatml template")
moet("export", ck, "ex-hf-mistral", "--format", "hf", "--chat-template", "mistral")
if json.load(open("ex-hf-mistral/tokenizer_config.json")).get("chat_template") != qm:
    fail("--chat-template mistral: tokenizer_config.json does not hold the mistral template")
got = ids_of(moet("generate", "ex-merged", "--chat", "Where is Eden?", "--system", "Be brief.", "--prompt-ids")
             .stdout.decode())
if got != want_ids:
    fail(f"generate --chat on the merged export (template from its tokenizer_config.json): {got} != {want_ids}")
print("ok   chatml recorded by prep, in trainer_state.json, tokenizer_config.json of peft / merged exports; "
      "--chat-template overrides; generate --chat on the checkpoint and on the merged export: the same ids")


def llama(gguf, mode, stdin=None, add_ass=False):
    r = subprocess.run([os.environ["LLAMA_CHECK"], gguf, mode] + (["--add-ass"] if add_ass else []), input=stdin,
                       capture_output=True)
    if r.returncode:
        raise SystemExit(f"llama_check {mode}: {r.stderr.decode()}")
    return r.stdout.decode()


def records(conv):
    return b"".join(f"{m['role']} {len(m['content'].encode())}\n".encode() + m["content"].encode() for m in conv)


def llama_vs_moet(gguf, tpath, tpl, bos):
    if llama(gguf, "chat-template") != jinja_of(tpath, tpl):
        fail(f"{gguf}: the template llama.cpp reads back differs from moet's {tpl} template")
    n = 0
    for ci, conv in enumerate(CONVS):  # llama.cpp's built-in renderings: no empty replies, no odd roles
        if any(not m["content"] for m in conv) or "<|im_start|>" in conv[0]["content"]:
            continue
        for gen in (False, True):
            if tpl == "mistral" and (not gen) != (conv[-1]["role"] == "assistant"):
                continue  # llama.cpp's mistral adds no EOS after a last user turn; moet's reply prompt needs one
            args = ["tokenize", tpath, "--chat", tpl, "--text"] + (["--generation-prompt"] if gen else [])
            m = json.loads(moet(*args, stdin=json.dumps(conv).encode()).stdout)
            got = (bos or "") + llama(gguf, "chat-apply", records(conv), add_ass=gen)
            if tpl == "chatml" and not gen:
                got += TOKS["qwen"][2]  # the document's EOS: moet's template ends a conversation with it
            if got != m:
                fail(f"{gguf} conv {ci} gen {gen}: llama.cpp {got!r} != moet {m!r}")
            n += 1
    return n


n = llama_vs_moet("ex-gguf/model-f32.gguf", qtok, "chatml", None)
moet("export", TINY_DIR, "ex-tiny-gguf", "--format", "gguf")
n += llama_vs_moet("ex-tiny-gguf/model-f32.gguf", TOKS["tiny"][0], "mistral", "<s>")
print(f"ok   llama.cpp reads tokenizer.chat_template back byte for byte (Qwen chatml, tiny mistral) and "
      f"llama_chat_apply_template formats {n} conversations as moet does (BOS aside)")

# ---- 4. bad input: one line, non-zero exit
open("bad.json", "w").write('[{"role": "user", "content": "hi"')
open("role.json", "w").write('[{"role": "wizard\u001b[31m", "content": "hi"}]')
open("notlist.json", "w").write('{"role": "user"}')
for args, code, msg in [
    (["generate", TINY_DIR, "--chat-file", "bad.json"], 1, "--chat-file bad.json: not valid JSON"),
    (["generate", TINY_DIR, "--chat-file", "role.json"], 1, "unknown role 'wizard\\x1B[31m' for the mistral template"),
    (["generate", TINY_DIR, "--chat-file", "notlist.json"], 1, "expected a JSON list of"),
    (["generate", TINY_DIR, "--chat-file", "nosuch.json"], 1, "nosuch.json"),
    (["generate", TINY_DIR, "--chat", "hi", "--chat-template", "alp\x1baca"], 2, "unknown chat template 'alp\\x1Baca'"),
    (["generate", TINY_DIR, "--chat", "hi", "--prompt", "x"], 2, "give one of --prompt, --chat and --chat-file"),
    (["generate", TINY_DIR, "--prompt", "x", "--system", "s"], 2, "--system goes with --chat"),
    (["export", TINY_DIR, "never", "--format", "hf", "--chat-template", "alpaca"], 2, "unknown chat template 'alpaca'"),
    (["tokenize", TOKS["tiny"][0], "--chat", "alpaca"], 1, "unknown chat template 'alpaca'"),
]:
    r = moet(*args, stdin=b"[]", ok=False)
    err = r.stderr.decode()
    if r.returncode != code or msg not in err or (code == 1 and err.count("\n") != 1):
        fail(f"moet {' '.join(args)}: exit {r.returncode} (want {code}), stderr {err!r} (want {msg!r})")
print("ok   bad --chat-file JSON, unknown role (quoted), unknown template, conflicting flags: one line, exit 1 / 2")

if failures:
    print(f"t_chat: {len(failures)} checks FAILED")
    sys.exit(1)
print("t_chat: all checks passed")
