"""ESM-2 scoring of a FASTA file: pseudo-log-likelihood (masked marginals) and mean embeddings.

    gflow run examples/esm_scoring.py:score_fasta --param fasta=examples/data/proteins.fasta \\
        --param model=/path/to/esm2_t6_8M_UR50D        # a folder written by save_pretrained
    gflow run examples/esm_scoring.py:score_fasta --param fasta=... --param model=facebook/esm2_t6_8M_UR50D

``model`` is a folder made with ``save_pretrained`` or a hub id that is already in the local Hugging
Face cache; gflow never downloads weights. The flow reads the FASTA and resolves the model on the
driver (bad input fails before any work is submitted), turns the model into an artifact (its files
by digest, fetched once per worker host), sorts the proteins by length and maps ``score_proteins``
over them: one task run per protein (recorded, cached and retried on its own), while the function is
vectorized (``batch_size``): gflow hands it up to ``batch_size`` proteins of similar length at a time.
The network is a ``@gflow.warm`` value: loaded once per worker process, whatever the number of calls.
The task runs in its own image (torch + transformers); the flow itself needs neither. Each protein
gets one ``Score``: ``value`` is the PLL (sum over residues of log p(residue | the rest), in nats),
``provenance`` holds the per-residue PLL, the model, and the digest of the protein's mean embedding,
which is stored as a typed blob in the artifact store (``load_embedding`` reads it back). On a GPU
the model runs in bf16 with SDPA attention.

No weights at hand? ``python examples/esm_scoring.py --random-model /tmp/esm`` writes a randomly
initialised ESM-2 (8M architecture) there, to try the flow offline.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import gflow
from gflow.extras import require
from gflow.models import materialize, resolve_model
from gflow.objects import Model, Protein, Score
from gflow.objects.fasta import read_fasta

ESM_IMAGE = gflow.Image(packages=["torch==2.13.0", "transformers>=4.40", "numpy>=1.26"])
"""The scoring stage's image: torch (CPU wheel; use a CUDA base and wheel for GPUs) and transformers."""

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
         "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
"""ESM-2's alphabet, in its token order."""

PRESETS = {  # (layers, hidden, heads, intermediate): the published ESM-2 shapes, and a tiny one for tests
    "tiny": (2, 32, 4, 64),
    "8M": (6, 320, 20, 1280),
    "35M": (12, 480, 20, 1920),
    "650M": (33, 1280, 20, 5120),
}
MASKED_ROWS = 256  # masked copies scored per forward pass (positions x sequences)

def _need_ml() -> None:
    """A clear error (naming the extra) where torch or transformers is missing."""
    require("torch", "ml", "ESM-2 scoring")
    require("transformers", "ml", "ESM-2 scoring")


def save_random_esm(path: str | os.PathLike[str], preset: str = "tiny", seed: int = 0) -> str:
    """Writes a randomly initialised ESM-2 (config, weights, tokenizer) with ``save_pretrained``.

    For tests and offline trials: the architecture is ESM-2's, the weights are noise.
    """
    _need_ml()
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    layers, hidden, heads, intermediate = PRESETS[preset]
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    config = EsmConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=1026,
                       position_embedding_type="rotary", pad_token_id=1, mask_token_id=32, token_dropout=True,
                       emb_layer_norm_before=False)
    torch.manual_seed(seed)
    EsmForMaskedLM(config).save_pretrained(folder)
    EsmTokenizer(vocab).save_pretrained(folder)
    return folder


@gflow.warm(max_items=1)
def esm_network(model_json: str, device: str) -> tuple[Any, Any, Any]:
    """Tokenizer, network and device: loaded once per worker process (one model on the device at a time)."""
    import torch
    from transformers import AutoTokenizer, EsmForMaskedLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = materialize(Model.model_validate_json(model_json))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    net = EsmForMaskedLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return AutoTokenizer.from_pretrained(folder), net.to(device).eval(), device


def load_esm(model: Model) -> tuple[Any, Any, Any]:
    """Tokenizer, network and device for ``model``: materialized and loaded once per process."""
    _need_ml()
    import torch

    return esm_network(model.model_dump_json(), "cuda" if torch.cuda.is_available() else "cpu")


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), at most ``batch_size`` each."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def esm_batch(tokenizer: Any, net: Any, device: Any, sequences: Sequence[str]) -> tuple[list[float], Any]:
    """PLL by masked marginals and mean last-layer embeddings of one batch (the work, without gflow).

    Returns:
        (pll per sequence, a float32 CPU tensor of shape [batch, hidden] of mean residue embeddings)
    """
    import torch

    enc = tokenizer(list(sequences), padding=True, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    attention = enc["attention_mask"].to(device)
    lengths = [len(s) for s in sequences]
    n, width = ids.shape
    with torch.inference_mode():
        out = net(input_ids=ids, attention_mask=attention, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()
        residues = torch.zeros(n, width, 1, device=device)
        for row, length in enumerate(lengths):
            residues[row, 1 : length + 1] = 1.0  # positions 1..L: residues, not <cls>/<eos>/<pad>
        embeddings = (hidden * residues).sum(1) / residues.sum(1).clamp(min=1.0)
        pll = torch.zeros(n, dtype=torch.float64, device=device)
        pairs = [(row, pos) for pos in range(1, max(lengths) + 1) for row in range(n) if pos <= lengths[row]]
        for start in range(0, len(pairs), MASKED_ROWS):
            chunk = pairs[start : start + MASKED_ROWS]
            rows = torch.tensor([r for r, _ in chunk], device=device)
            positions = torch.tensor([p for _, p in chunk], device=device)
            masked = ids[rows].clone()
            masked[torch.arange(len(chunk), device=device), positions] = tokenizer.mask_token_id
            logits = net(input_ids=masked, attention_mask=attention[rows]).logits
            picked = logits[torch.arange(len(chunk), device=device), positions].float().log_softmax(-1)
            true = ids[rows, positions]
            pll.index_add_(0, rows, picked.gather(1, true[:, None])[:, 0].double())
    return pll.cpu().tolist(), embeddings.cpu().contiguous()


def esm_unmasked(tokenizer: Any, net: Any, device: Any, sequences: Sequence[str]) -> list[float]:
    """Mean log p(residue | whole sequence) per sequence, from one unmasked forward pass (cheap).

    The "wild-type marginal" score used for precomputing a library; PLL needs one pass per residue.
    """
    import torch

    enc = tokenizer(list(sequences), padding=True, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    with torch.inference_mode():
        logp = net(input_ids=ids, attention_mask=enc["attention_mask"].to(device)).logits.float().log_softmax(-1)
        picked = logp.gather(2, ids[:, :, None])[:, :, 0]
    return [float(picked[row, 1 : len(seq) + 1].mean()) for row, seq in enumerate(sequences)]


def blob_digest(tensor: Any) -> str:
    """The artifact digest gflow gives a tensor result (sha256 of its raw bytes), to reference it."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
    return "sha256:" + hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def load_embedding(score: Score, artifacts: Any = None) -> Any:
    """The mean embedding a score refers to, read back from the artifact store as a float32 tensor."""
    import torch

    from gflow.models import _artifacts

    raw = bytearray(_artifacts(artifacts).get(score.provenance["embedding"]))
    return torch.frombuffer(raw, dtype=torch.float32).clone()


def esm_scores(model: Model, proteins: Sequence[Protein]) -> list[tuple[Score, Any]]:
    """(Score, mean embedding) per protein of one batch (the work of ``score_proteins``)."""
    tokenizer, net, device = load_esm(model)
    pll, embeddings = esm_batch(tokenizer, net, device, [p.sequence for p in proteins])
    out: list[tuple[Score, Any]] = []
    for protein, value, vector in zip(proteins, pll, embeddings, strict=True):
        vector = vector.clone()
        out.append((Score(name="esm2_pll", value=round(value, 6), units="nats", provenance={
            "model": model.name, "model_source": model.source, "protein": protein.name or "",
            "protein_id": protein.content_id, "pll_per_residue": f"{value / len(protein):.6f}",
            "embedding": blob_digest(vector), "embedding_shape": str(vector.shape[0]), "embedding_dtype": "float32",
        }), vector))
    return out


@gflow.task(image=ESM_IMAGE, cache=True, batch_size=32, resources=gflow.Resources(cpu=1, memory="4Gi"))
def score_proteins(proteins: list[Protein], model: Model) -> list[tuple[Score, Any]]:
    """ESM-2 PLL and mean embedding per protein. Vectorized: ``proteins`` is a batch of up to ``batch_size``
    (gflow groups the calls); each protein is still its own task run, and returns (Score, embedding)."""
    return esm_scores(model, proteins)


@gflow.task(image=ESM_IMAGE, cache=True, resources=gflow.Resources(cpu=1, memory="4Gi"))
def score_batch(proteins: list[Protein], model: Model) -> tuple[list[Score], list[Any]]:
    """ESM-2 PLL and mean embedding of a hand-made batch (one task run per batch; kept for comparison:
    ``score_proteins`` gives each protein its own task run and lets gflow do the batching)."""
    pairs = esm_scores(model, proteins)
    return [s for s, _ in pairs], [v for _, v in pairs]


@gflow.flow
def score_fasta(fasta: str, model: str = "facebook/esm2_t6_8M_UR50D", batch_size: int = 32) -> list[Score]:
    """One ESM-2 Score per protein of ``fasta`` (a path or FASTA text), in file order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    proteins = read_fasta(fasta)  # a bad record fails here, naming it, before anything is submitted
    if not proteins:
        raise ValueError("the FASTA has no records")
    model_obj = resolve_model(model)
    order = [i for batch in length_batches([len(p) for p in proteins], batch_size) for i in batch]
    task = score_proteins if batch_size == score_proteins.options.batch_size else \
        score_proteins.with_options(batch_size=batch_size)
    results = task.map([proteins[i] for i in order], model=model_obj)  # similar lengths share a batch
    scores: list[Score | None] = [None] * len(proteins)
    for i, result in zip(order, results, strict=True):
        scores[i] = result.result()[0]
    return [s for s in scores if s is not None]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fasta", nargs="?", default=os.path.join(os.path.dirname(__file__), "data", "proteins.fasta"))
    parser.add_argument("--model", default="facebook/esm2_t6_8M_UR50D")
    parser.add_argument("--random-model", metavar="DIR", help="write a random ESM-2 (8M shape) to DIR and use it")
    args = parser.parse_args()
    try:
        _need_ml()
    except gflow.GflowError as e:
        raise SystemExit(f"error: {e}") from None
    if args.random_model:
        args.model = save_random_esm(args.random_model, preset="8M")
    for s in score_fasta(args.fasta, model=args.model):
        print(f"{s.provenance['protein']:<24} PLL {s.value:10.3f}  per residue {s.provenance['pll_per_residue']}")
