"""Train the embedded tiny model shipped in ``fixtures/tiny-llama``.

A Llama-architecture causal LM with grouped-query attention (4 heads, 2 KV heads), ~1.3 M
parameters, and its own byte-level BPE tokenizer, trained on text that every Python install has
offline: the docstrings of the standard library. Seeded and deterministic on one machine; runs in
about 6 minutes on 2 CPU cores.

Why trained and not random: a random model's next-token distributions are nearly flat, so any
kernel difference flips greedy tokens and parity tests measure noise. Training makes the top-1 /
top-2 logit margins large (see docs/embedded-model.md for the measured margins).

Usage::

    python scripts/train_tiny_model.py [--out fixtures/tiny-llama] [--steps 700]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import pkgutil
import random
import sys
import time
import warnings
from pathlib import Path

SEED = 1234
VOCAB = 2048
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>"]

# Modules whose docstrings make the corpus; a fixed list so the text is the same everywhere.
MODULES = sorted(
    m.name
    for m in pkgutil.iter_modules()
    if m.name
    in {
        "abc",
        "argparse",
        "ast",
        "asyncio",
        "base64",
        "bisect",
        "calendar",
        "collections",
        "concurrent",
        "configparser",
        "contextlib",
        "copy",
        "csv",
        "dataclasses",
        "datetime",
        "decimal",
        "difflib",
        "email",
        "enum",
        "fractions",
        "ftplib",
        "functools",
        "getopt",
        "gettext",
        "glob",
        "gzip",
        "hashlib",
        "heapq",
        "hmac",
        "html",
        "http",
        "imaplib",
        "inspect",
        "io",
        "ipaddress",
        "json",
        "logging",
        "lzma",
        "mailbox",
        "mimetypes",
        "multiprocessing",
        "numbers",
        "operator",
        "optparse",
        "os",
        "pathlib",
        "pickle",
        "pkgutil",
        "platform",
        "plistlib",
        "poplib",
        "pprint",
        "queue",
        "random",
        "re",
        "sched",
        "secrets",
        "selectors",
        "shelve",
        "shlex",
        "shutil",
        "smtplib",
        "socket",
        "socketserver",
        "sqlite3",
        "ssl",
        "statistics",
        "string",
        "subprocess",
        "tarfile",
        "tempfile",
        "textwrap",
        "threading",
        "timeit",
        "tokenize",
        "trace",
        "traceback",
        "turtle",
        "typing",
        "unittest",
        "urllib",
        "uuid",
        "warnings",
        "weakref",
        "xml",
        "zipfile",
        "zoneinfo",
    }
)


def corpus() -> list[str]:
    """Docstrings of the standard library, one paragraph per entry, de-duplicated, in a fixed order."""
    seen: set[str] = set()
    texts: list[str] = []

    def add(doc: str | None) -> None:
        if not isinstance(doc, str) or not doc:
            return
        for para in inspect.cleandoc(doc).split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= 40 and para not in seen and ">>>" not in para:
                seen.add(para)
                texts.append(para)

    warnings.simplefilter("ignore")
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # a module missing on this build of Python: skip it, the rest suffices
            continue
        add(mod.__doc__)
        for _, obj in sorted(vars(mod).items()):
            if getattr(obj, "__module__", None) != name:
                continue
            add(getattr(obj, "__doc__", None))
            if inspect.isclass(obj):
                for _, member in sorted(vars(obj).items()):
                    add(getattr(member, "__doc__", None) if callable(member) else None)
    return texts


def train_tokenizer(texts: list[str], out: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        padding_side="left",
        model_max_length=512,
    )
    fast.save_pretrained(out)
    return fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llama")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    texts = corpus()
    args.out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, args.out)
    eos = tok.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t)["input_ids"] + [eos])
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus: {len(texts)} paragraphs, {len(data)} tokens, vocab {len(tok)}", flush=True)

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = 50

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        offsets = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[o : o + args.seq_len] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)

    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out, safe_serialization=True)
    info = {
        "seed": SEED,
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "final_loss": round(loss.item(), 4),
        "parameters": n_params,
        "corpus_paragraphs": len(texts),
        "corpus_tokens": len(data),
        "train_seconds": round(time.perf_counter() - start, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
