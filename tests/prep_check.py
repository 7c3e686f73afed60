"""prep_check: checks `moet prep` output with h5py, independently of the C code.

The expected documents are rebuilt here from the inputs following the rules in
data/prep.h and data/chat.h, with every text piece encoded by `moet tokenize`
(so the tokenizer itself is not under test here, only how prep uses it).

usage: prep_check.py layout OUT TOKENIZER SEQ_LEN ROWS_PER_SHARD
       prep_check.py docs   OUT TOKENIZER TEMPLATE [--split-paragraphs] INPUT...
       prep_check.py split  OUT_ALL OUT_SPLIT
       prep_check.py same   OUT1 OUT2
Needs $MOET. Exits non-zero with a message on the first mismatch."""
import glob
import json
import os
import subprocess
import sys

import h5py
import numpy as np

MOET = os.environ["MOET"]


def fail(msg):
    print("prep_check: FAIL: " + msg)
    sys.exit(1)


def shards(out, split):
    return sorted(glob.glob(os.path.join(out, split + "-*.h5")))


def load_split(out, split):
    """All rows of a split, in shard order: tokens, loss_mask, doc_start."""
    tok, mask, ds = [], [], []
    for p in shards(out, split):
        with h5py.File(p, "r") as f:
            tok.append(f["tokens"][()])
            mask.append(f["loss_mask"][()])
            ds.append(f["doc_start"][()])
    if not tok:
        return None
    return np.concatenate(tok), np.concatenate(mask), np.concatenate(ds)


def documents(out, split, eos):
    """Cut a split's stream at doc_start; the padding after the last document is
    checked (EOS, mask 0, no doc_start) and removed."""
    data = load_split(out, split)
    if data is None:
        return []
    tok, mask, ds = (a.reshape(-1).astype(np.int64) for a in data)
    starts = list(np.flatnonzero(ds)) + [len(tok)]
    if starts[0] != 0:
        fail("%s: the stream does not begin with a document start" % split)
    docs = []
    for a, b in zip(starts, starts[1:]):
        t, m = tok[a:b], mask[a:b]
        docs.append((t, m))
    # the last document ends at its final EOS; the rest of the row is padding
    t, m = docs[-1]
    ends = np.flatnonzero(t == eos)
    last = None
    for e in ends:  # padding = the trailing run of EOS with mask 0
        if np.all(t[e + 1:] == eos) and np.all(m[e + 1:] == 0):
            last = e
            break
    if last is None:
        fail("%s: the last row is not padded with EOS / mask 0" % split)
    docs[-1] = (t[: last + 1], m[: last + 1])
    return docs


def encode(tokenizer, text, bos):
    args = [MOET, "tokenize", tokenizer] + ([] if bos else ["--no-bos"])
    r = subprocess.run(args, input=text.encode("utf-8"), stdout=subprocess.PIPE, check=True)
    return [int(x) for x in r.stdout.split()]


class Doc:
    def __init__(self):
        self.ids, self.mask = [], []

    def add(self, ids, m):
        self.ids += ids
        self.mask += [m] * len(ids)


def special_or_text(tokenizer, marker, vocab):
    return [vocab[marker]] if marker in vocab else encode(tokenizer, marker, False)


def render_chat(tokenizer, template, msgs, bos, eos, vocab):
    d = Doc()
    if bos >= 0:  # byte-level tokenizers (Qwen) have no BOS
        d.add([bos], 0)
    if template == "mistral":
        sys_msg = None
        if msgs[0]["role"] == "system":
            sys_msg, msgs = msgs[0]["content"], msgs[1:]
        for k, m in enumerate(msgs):
            if k % 2 == 0:
                content = (sys_msg + "\n\n" if k == 0 and sys_msg is not None else "") + m["content"]
                d.add(encode(tokenizer, "[INST] " + content + " [/INST]", False), 0)
            else:
                d.add(encode(tokenizer, m["content"], False), 1)
                d.add([eos], 1)
        if msgs[-1]["role"] != "assistant":
            d.add([eos], 0)
    else:
        for m in msgs:
            target = 1 if m["role"] == "assistant" else 0
            d.add(special_or_text(tokenizer, "<|im_start|>", vocab), 0)
            d.add(encode(tokenizer, m["role"] + "\n", False), 0)
            d.add(encode(tokenizer, m["content"], False), target)
            d.add(special_or_text(tokenizer, "<|im_end|>", vocab), target)
            d.add(encode(tokenizer, "\n", False), 0)
        d.add([eos], 0)
    return d


def expected_docs(tokenizer, template, paragraphs, inputs, bos, eos, vocab):
    docs = []

    def text_doc(text):
        d = Doc()
        ids = encode(tokenizer, text, True)  # what `moet tokenize` prints: BOS first, if any
        if bos >= 0:
            if ids[0] != bos:
                fail("moet tokenize did not start with BOS")
            d.add(ids[:1], 0)
            ids = ids[1:]
        d.add(ids + [eos], 1)
        docs.append(d)

    for path in inputs:
        raw = open(path, "rb").read().decode("utf-8")
        if path.endswith(".jsonl"):
            for line in raw.split("\n"):
                if not line.strip():
                    continue
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(o, dict):
                    continue
                if "text" in o:
                    if isinstance(o["text"], str) and o["text"]:
                        text_doc(o["text"])
                    continue
                msgs = o.get("messages")
                ok = isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs)
                roles = [m["role"] for m in msgs] if ok else []
                if ok and template == "mistral":
                    r = roles[1:] if roles[0] == "system" else roles
                    ok = len(r) > 0 and all(x == ("user" if k % 2 == 0 else "assistant") for k, x in enumerate(r))
                if ok and "assistant" in roles:  # a conversation without a target is skipped (and counted)
                    docs.append(render_chat(tokenizer, template, msgs, bos, eos, vocab))
        elif paragraphs:
            lines, block = raw.split("\n"), []
            for ln in lines + [""]:
                if ln.strip(" \t\r"):
                    block.append(ln)
                elif block:
                    text = "\n".join(block)
                    text_doc(text[:-1] if text.endswith("\r") else text)
                    block = []
        else:
            text = raw.rstrip("\r\n")
            if text:
                text_doc(text)
    return docs


def attrs_of(out):
    p = (shards(out, "train") + shards(out, "val"))[0]
    with h5py.File(p, "r") as f:
        return {k: f.attrs[k] for k in f.attrs}


def cmd_layout(out, tokenizer, seq_len, rows_per_shard, bos=1, eos=2):
    seq_len, rows_per_shard, bos, eos = int(seq_len), int(rows_per_shard), int(bos), int(eos)
    tj = json.load(open(tokenizer, encoding="utf-8"))
    vocab = max(list(tj["model"]["vocab"].values()) + [t["id"] for t in tj["added_tokens"]]) + 1
    sha = subprocess.run(["sha256sum", tokenizer], stdout=subprocess.PIPE, check=True).stdout.split()[0].decode()
    for split in ("train", "val"):
        files = shards(out, split)
        for i, p in enumerate(files):
            if os.path.basename(p) != "%s-%05d.h5" % (split, i):
                fail("%s: shards are not numbered 00000, 00001, ...: %s" % (split, p))
            with h5py.File(p, "r") as f:
                a = f.attrs
                want = {"format": "moet-shard-1", "vocab_size": vocab, "bos_id": bos, "eos_id": eos,
                        "tokenizer_sha256": sha}
                for k, v in want.items():
                    got = a[k].decode() if isinstance(a[k], bytes) else a[k]
                    if got != v:
                        fail("%s: attribute %s = %r, expected %r" % (p, k, got, v))
                t, m, d = f["tokens"], f["loss_mask"], f["doc_start"]
                want_dtype = np.uint16 if vocab <= 65535 else np.uint32
                if t.dtype != want_dtype or m.dtype != np.uint8 or d.dtype != np.uint8:
                    fail("%s: dtypes %s %s %s" % (p, t.dtype, m.dtype, d.dtype))
                rows = rows_per_shard if i < len(files) - 1 else t.shape[0]
                if t.shape != (rows, seq_len) or m.shape != t.shape or d.shape != t.shape:
                    fail("%s: shapes %s %s %s, expected (%d, %d)" % (p, t.shape, m.shape, d.shape, rows, seq_len))
                if not 1 <= t.shape[0] <= rows_per_shard:
                    fail("%s: %d rows, rows_per_shard is %d" % (p, t.shape[0], rows_per_shard))
                if t[()].max() >= vocab or not set(np.unique(m[()])) <= {0, 1} or not set(np.unique(d[()])) <= {0, 1}:
                    fail("%s: token or mask values out of range" % p)
    print("layout ok: %d train, %d val shards" % (len(shards(out, "train")), len(shards(out, "val"))))


def cmd_docs(out, tokenizer, template, *rest):
    paragraphs = "--split-paragraphs" in rest
    inputs = [x for x in rest if x != "--split-paragraphs"]
    a = attrs_of(out)
    bos, eos = int(a["bos_id"]), int(a["eos_id"])
    tj = json.load(open(tokenizer, encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tj["added_tokens"]})
    want = expected_docs(tokenizer, template, paragraphs, inputs, bos, eos, vocab)
    got = documents(out, "train", eos)
    if len(got) != len(want):
        fail("%d documents in the shards, %d expected" % (len(got), len(want)))
    targets = 0
    for k, (w, (t, m)) in enumerate(zip(want, got)):
        if list(t) != w.ids:
            fail("document %d: ids\n  got  %s\n  want %s" % (k, list(t), w.ids))
        if list(m) != w.mask:
            fail("document %d: loss_mask\n  got  %s\n  want %s" % (k, list(m), w.mask))
        targets += sum(w.mask)
    print("docs ok: %d documents, %d targets" % (len(got), targets))


def cmd_split(out_all, out_split):
    eos = int(attrs_of(out_all)["eos_id"])
    key = lambda d: (tuple(d[0]), tuple(d[1]))
    every = sorted(map(key, documents(out_all, "train", eos)))
    train = documents(out_split, "train", eos)
    val = documents(out_split, "val", eos)
    if not train or not val:
        fail("split: %d train and %d val documents; both must be non-empty" % (len(train), len(val)))
    if sorted(map(key, train + val)) != every:
        fail("split: train + val documents are not the documents of the unsplit run")
    print("split ok: %d train, %d val documents" % (len(train), len(val)))


def cmd_same(out1, out2):
    names = lambda o: [os.path.basename(p) for p in shards(o, "train") + shards(o, "val")]
    if names(out1) != names(out2):
        fail("different shard files: %s vs %s" % (names(out1), names(out2)))
    for n in names(out1):
        with h5py.File(os.path.join(out1, n), "r") as f, h5py.File(os.path.join(out2, n), "r") as g:
            for k in ("tokens", "loss_mask", "doc_start"):
                if not np.array_equal(f[k][()], g[k][()]):
                    fail("%s /%s differs between runs" % (n, k))
    print("same ok: %d shard files" % len(names(out1)))


if __name__ == "__main__":
    cmds = {"layout": cmd_layout, "docs": cmd_docs, "split": cmd_split, "same": cmd_same}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])
