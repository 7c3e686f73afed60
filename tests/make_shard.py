"""Write a moet-shard-1 HDF5 file of random tokens (for trainer tests).

usage: make_shard.py OUT.h5 ROWS SEQ VOCAB [SEED] [--no-mask | --zero-mask] [--doc-every N]
Tokens are drawn from a skewed distribution with local repetition so a model can learn
something; loss_mask masks the first quarter of every other row (like chat prompts);
--no-mask writes no loss_mask (every position a target), --zero-mask one that is all 0
(no target at all).
"""
import sys

import h5py
import numpy as np


def write_shard(path, tokens, vocab, loss_mask=None, doc_start=None, bos=1, eos=2, tokenizer_sha256=""):
    """tokens (rows, seq) as a moet-shard-1 file (uint16 when the vocabulary fits, else
    uint32), with the optional loss_mask / doc_start datasets and the format's attributes."""
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.asarray(tokens).astype(np.uint16 if vocab <= 65536 else np.uint32))
        if loss_mask is not None:
            f.create_dataset("loss_mask", data=np.asarray(loss_mask, dtype=np.uint8))
        if doc_start is not None:
            f.create_dataset("doc_start", data=np.asarray(doc_start, dtype=np.uint8))
        f.attrs.update(dict(format="moet-shard-1", vocab_size=vocab, bos_id=bos, eos_id=eos,
                            tokenizer_sha256=tokenizer_sha256))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out, rows, seq, vocab = args[0], int(args[1]), int(args[2]), int(args[3])
    seed = int(args[4]) if len(args) > 4 else 0
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    tok = rng.choice(vocab, size=(rows, seq), p=p)
    tok[:, 1::2] = (tok[:, 0::2][:, : tok[:, 1::2].shape[1]] * 7 + 3) % vocab  # learnable pairs
    tok[:, 0] = 1
    mask = np.ones((rows, seq), dtype=np.uint8)
    mask[::2, : seq // 4] = 0
    if "--zero-mask" in sys.argv:
        mask[:] = 0
    doc = np.zeros((rows, seq), dtype=np.uint8)
    doc[:, 0] = 1
    if "--doc-every" in sys.argv:
        n = int(sys.argv[sys.argv.index("--doc-every") + 1])
        doc[:, ::n] = 1
    write_shard(out, tok, vocab, None if "--no-mask" in sys.argv else mask, doc)


if __name__ == "__main__":
    main()
