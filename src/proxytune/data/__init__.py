"""Built-in data for the proxies: byte/token LM corpora and a synthetic teacher task.

>>> from proxytune.data import load, TeacherTask
>>> corpus = load("stdlib")              # Python's own stdlib sources, no download
>>> x, y = corpus.sample("train", 8, 128, torch.Generator().manual_seed(0))
>>> task = TeacherTask(d_in=16, d_out=4, kind="classification", seed=0)

Both kinds share ``sample(split, batch_size, seq_len, generator)``,
``val_batches(n_batches, batch_size, seq_len)``, ``info()``, ``sha256``,
``vocab_size`` and ``task`` ("lm", "classification" or "regression").
"""

from .corpus import Corpus, DataError, load, load_stdlib, load_text, load_tokens
from .synthetic import TeacherTask

__all__ = ["Corpus", "DataError", "TeacherTask", "load", "load_stdlib", "load_text", "load_tokens"]
