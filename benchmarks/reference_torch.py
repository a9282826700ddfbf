"""A PyTorch CoCoHaNeRe train step written the way the authors' replication package does it.

transformers' PyTorch encoder in train mode (dropout on), the memory banks as plain torch tensors searched
with ``scores.topk``, the neighbours' token rows gathered by DataID from a token tensor and re-encoded with
gradient, L^B + L^HN with cross-entropy, ``loss.backward()``, grad-norm clip 1.0, ``torch.optim.AdamW``
with a linear decay schedule, then the FIFO push and the refresh of the retrieved slots.

It does the same work as our step (search *before* the push, own DataID / current batch / empty slots
masked, every sequence padded to the fixed Lq / Lc of the token table) so that the two time the same
computation; the replication package's bugs (docs/METHOD.md section 5) are not reproduced because they do not
change the cost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def embed(model: torch.nn.Module, pooling: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm embeddings of a transformers model, pooled as ours: "codet5p" (the model pools, projects
    and normalises), "mean" (masked mean, sentence-transformers' clamp) or the first token."""
    if pooling == "codet5p":
        return model(input_ids=ids, attention_mask=mask)  # already L2-normalised
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    else:
        pooled = hidden[:, 0]
    return F.normalize(pooled, dim=-1)


class TorchReferenceStep:
    """One CoCoHaNeRe step per call; ``step(data_id, query_ids, code_ids) -> loss`` (a float)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pooling: str,
        pad_id: int,
        query_table: torch.Tensor,
        code_table: torch.Tensor,
        *,
        dim: int,
        k: int = 10,
        bank_size: int = 8096,
        temperature: float = 0.05,
        learning_rate: float = 3e-5,
        total_steps: int = 100_000,
        seed: int = 0,
        device: str = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype  # e.g. torch.bfloat16: mixed precision as torch.autocast does it
        self.model = model.to(self.device).train()
        self.pooling = pooling
        self.pad_id = pad_id
        self.query_table = query_table.long().to(self.device)
        self.code_table = code_table.long().to(self.device)
        self.k = k
        self.temperature = temperature
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, eps=1e-8, weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / total_steps)
        )
        self.query_bank = torch.zeros(bank_size, dim, device=self.device)
        self.code_bank = torch.zeros(bank_size, dim, device=self.device)
        self.query_bank_ids = torch.full((bank_size,), -1, dtype=torch.long, device=self.device)
        self.code_bank_ids = torch.full((bank_size,), -1, dtype=torch.long, device=self.device)
        self.ptr = 0

    # -------------------------------------------------------------------------------------------
    # "cap": every encode call at the cap (the authors' way); "longest": each call cut to its longest row
    # (sentence-transformers' dynamic padding).
    padding = "cap"

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        if self.padding == "longest":
            real = (ids != self.pad_id).any(dim=0).nonzero()
            ids = ids[:, : int(real.max()) + 1 if real.numel() else 1]
        if self.autocast_dtype is None:
            return self._encode(ids)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self._encode(ids).float()

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        return embed(self.model, self.pooling, ids, (ids != self.pad_id).long())

    @torch.no_grad()
    def search(self, keys: torch.Tensor, bank: torch.Tensor, bank_ids: torch.Tensor, batch_ids: torch.Tensor):
        scores = keys @ bank.T
        blocked = (bank_ids[None, :] == -1) | (bank_ids[None, :] == batch_ids[:, None])
        blocked |= torch.isin(bank_ids, batch_ids)[None, :]
        scores = scores.masked_fill(blocked, float("-inf"))
        top_scores, top_slots = scores.topk(self.k, dim=1)
        valid = top_scores > float("-inf")
        return top_slots, bank_ids[top_slots].masked_fill(~valid, -1), valid

    def hard_negative_loss(self, anchor, positive, negatives, valid):
        pos = (anchor * positive).sum(-1, keepdim=True)
        neg = torch.einsum("nd,nkd->nk", anchor, negatives).masked_fill(~valid, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device))

    # -------------------------------------------------------------------------------------------
    def step(self, data_id: torch.Tensor, query_ids: torch.Tensor, code_ids: torch.Tensor) -> float:
        data_id = data_id.long().to(self.device)
        n = data_id.shape[0]
        q = self.encode(query_ids.long().to(self.device))
        c = self.encode(code_ids.long().to(self.device))
        labels = torch.arange(n, device=self.device)
        logits = q @ c.T / self.temperature
        loss_b = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

        loss = loss_b
        if self.k:
            code_slots, code_hit_ids, code_valid = self.search(q.detach(), self.code_bank, self.code_bank_ids, data_id)
            query_slots, query_hit_ids, query_valid = self.search(
                c.detach(), self.query_bank, self.query_bank_ids, data_id
            )
            own = data_id[:, None].expand(n, self.k)
            code_rows = self.code_table[torch.where(code_valid, code_hit_ids, own)]
            query_rows = self.query_table[torch.where(query_valid, query_hit_ids, own)]
            c_neg = self.encode(code_rows.reshape(n * self.k, -1)).reshape(n, self.k, -1)
            q_neg = self.encode(query_rows.reshape(n * self.k, -1)).reshape(n, self.k, -1)
            loss_hn = 0.5 * (
                self.hard_negative_loss(q, c, c_neg, code_valid) + self.hard_negative_loss(c, q, q_neg, query_valid)
            )
            loss = loss_b + loss_hn

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()

        with torch.no_grad():
            size = self.query_bank.shape[0]
            slots = (self.ptr + torch.arange(n, device=self.device)) % size
            for bank, ids, emb in ((self.query_bank, self.query_bank_ids, q), (self.code_bank, self.code_bank_ids, c)):
                ids[torch.isin(ids, data_id)] = -1
                bank[slots] = emb.detach()
                ids[slots] = data_id
            self.ptr = (self.ptr + n) % size
            if self.k:
                for bank, ids, slots_, hit_ids, valid, emb in (
                    (self.code_bank, self.code_bank_ids, code_slots, code_hit_ids, code_valid, c_neg),
                    (self.query_bank, self.query_bank_ids, query_slots, query_hit_ids, query_valid, q_neg),
                ):
                    still = valid & (ids[slots_] == hit_ids)
                    bank[slots_[still]] = emb.detach()[still]
        return float(loss.detach())


def prefill(ref: TorchReferenceStep, query_emb: torch.Tensor, code_emb: torch.Tensor, ids: torch.Tensor) -> None:
    """Fill the banks with given (DataID, embedding) rows, as after a warm-up phase."""
    m = ids.shape[0]
    ref.query_bank[:m] = query_emb.to(ref.device)
    ref.code_bank[:m] = code_emb.to(ref.device)
    ref.query_bank_ids[:m] = ids.long().to(ref.device)
    ref.code_bank_ids[:m] = ids.long().to(ref.device)
    ref.ptr = m % ref.query_bank.shape[0]


def num_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
