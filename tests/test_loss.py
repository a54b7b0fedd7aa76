import pytest
import torch
import torch.nn.functional as F

from gpt2_lightning.backends.cpu.loss import cross_entropy, head_loss
from gpt2_lightning.data.dataset import IGNORE_INDEX
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.train.loss import masked_lm_loss

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_chunked_cross_entropy_equals_torch_in_value_and_gradient(dtype, chunk_rows):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(13, 1000, generator=gen)).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (13,), generator=gen)
    count = torch.tensor(11)  # a mean over more tokens than this chunk holds, as masked_lm_loss passes it
    expected = F.cross_entropy(logits.float(), targets, reduction="sum") / count
    (2.5 * expected).backward()
    expected_grad, logits.grad = logits.grad, None

    loss = cross_entropy(logits, targets, count, chunk_rows=chunk_rows)
    (2.5 * loss).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.float(), expected_grad.float(), atol=1e-6, rtol=1e-2)


@pytest.mark.parametrize("kind", ["fp32", "fp32 through oneDNN", "fp32 through oneDNN, torch's gradients",
                                  "bf16 autocast"])
@pytest.mark.parametrize("per_row", [False, True], ids=["mean", "per-row"])
def test_the_head_in_vocabulary_blocks_with_its_loss_equals_the_head_and_torch_cross_entropy(kind, per_row):
    from gpt2_lightning.backends.cpu.loss import token_losses
    from gpt2_lightning.backends.cpu.onednn import HEAD_BLOCK_ROWS, OneDNNLinear

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(32, 2 * HEAD_BLOCK_ROWS + 5, bias=False)  # two whole blocks and a part
    if kind.startswith("fp32 through oneDNN"):
        head = OneDNNLinear(head, "torch" if kind.endswith("torch's gradients") else "onednn")
    hidden = torch.randn(9, 32, generator=gen)
    targets = torch.randint(0, head.out_features, (9,), generator=gen)
    row_weights = torch.rand(9, generator=gen)  # what flows back into per-row losses (DPO's sums)
    count = torch.tensor(7)

    def reference(h):
        losses = F.cross_entropy(head(h).float(), targets, reduction="none")
        return losses if per_row else losses.sum() / count

    def blocked(h):
        return token_losses(head, h, targets) if per_row else head_loss(head, h, targets, count)

    results = []
    for loss_fn in (reference, blocked):
        head.weight.grad = None
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16 autocast"):
            loss = loss_fn(h)
        ((loss * row_weights).sum() if per_row else 3 * loss).backward()
        results.append((loss, h.grad, head.weight.grad))
    (loss, grad_hidden, grad_weight), (ours, ours_grad_hidden, ours_grad_weight) = results
    assert ours.dtype == torch.float32 and ours_grad_weight.dtype == torch.float32
    tolerance = dict(atol=1e-5, rtol=1e-5) if kind != "bf16 autocast" else dict(atol=1e-4, rtol=1e-2)
    torch.testing.assert_close(ours, loss, **tolerance)
    torch.testing.assert_close(ours_grad_hidden, grad_hidden, **tolerance)
    torch.testing.assert_close(ours_grad_weight, grad_weight, **tolerance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_weight_gradient_in_another_dtype_equals_the_product_cast_afterwards(dtype):
    from gpt2_lightning.backends.cpu.onednn import HEAD_BLOCK_ROWS, weight_gradient

    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(9, 2 * HEAD_BLOCK_ROWS + 5, generator=gen).to(dtype)  # two whole blocks and a part
    x = torch.randn(9, 32, generator=gen).to(dtype)
    result = weight_gradient(grad, x, dtype=torch.float32)
    assert result.dtype == torch.float32 and result.shape == (2 * HEAD_BLOCK_ROWS + 5, 32)
    rounding = 2 ** -7 if dtype == torch.bfloat16 else 1e-6  # each block's product rounded to dtype once, as before
    torch.testing.assert_close(result, (grad.t() @ x).float(), rtol=rounding, atol=0)


def test_chunked_cross_entropy_without_gradient_keeps_no_buffer():
    logits = torch.randn(6, 50, requires_grad=True)
    targets = torch.randint(0, 50, (6,))
    with torch.no_grad():
        loss = cross_entropy(logits, targets, chunk_rows=4)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), targets))


@pytest.mark.parametrize("kernel", [None, head_loss], ids=["reference", "cpu-backend"])
@pytest.mark.parametrize("masked", [True, False], ids=["prompt-and-padding", "every-position-scored"])
def test_masked_lm_loss_equals_full_head_cross_entropy_with_ignore_index(masked, kernel):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    targets = torch.randint(0, TINY.vocab_size, (3, 10))
    if masked:
        targets[0, :4] = IGNORE_INDEX  # a masked prompt
        targets[2, 6:] = IGNORE_INDEX  # padding
    loss, count = masked_lm_loss(model, idx, targets, head_loss=kernel)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    expected = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    expected.backward()
    assert count.item() == (30 - 4 - 4 if masked else 30)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_masked_lm_loss_of_a_batch_without_scored_targets_is_zero():
    model = GPTModel(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    loss, count = masked_lm_loss(model, idx, torch.full((2, 5), IGNORE_INDEX))
    assert count.item() == 0 and loss.item() == 0.0


def cpu_trained_and_reference(tied: bool = True):
    """A tiny GPT prepared as the CPU backend trains fp32, its head loss, and an unprepared copy."""
    import copy
    import dataclasses

    from gpt2_lightning.backends import prepare_for_training, training_plan

    torch.manual_seed(0)
    model = GPTModel(dataclasses.replace(TINY, tie_weights=tied))
    reference = copy.deepcopy(model)
    kernels = prepare_for_training(model, training_plan("cpu", "32-true", TINY.emb_dim, measure=False))
    return model, kernels.head_loss, reference


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("head", ["blocked", "plain"], ids=["blocked-head", "plain-head"])
def test_the_cpu_backends_embedding_gradient_reaches_the_optimizer_dense_and_equal_to_the_reference(tied, head):
    model, head_loss_fn, reference = cpu_trained_and_reference(tied)
    assert (type(model.tok_emb) is torch.nn.Embedding) is not tied  # a tied one adds its rows into the head's
    assert not model.tok_emb.sparse  # DDP expects a sparse gradient of a sparse embedding
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    targets = torch.randint(0, TINY.vocab_size, (3, 10))
    # The plain head (F.linear and F.cross_entropy) leaves no gradient for a tied lookup's rows.
    for net, net_head_loss in ((model, head_loss_fn if head == "blocked" else None), (reference, None)):
        for _ in range(2):  # two batches accumulated, as with trainer.accumulate_grad_batches=2
            masked_lm_loss(net, idx, targets, head_loss=net_head_loss)[0].backward()
    grad, expected = model.tok_emb.weight.grad, reference.tok_emb.weight.grad
    assert grad.layout == torch.strided
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    optimizer.step()  # fused AdamW takes dense gradients only
    assert not torch.equal(model.tok_emb.weight, reference.tok_emb.weight)


def test_a_tied_embeddings_rows_go_into_the_heads_gradient_without_copying_it():
    from torch.profiler import profile

    model, blocked_head_loss, _ = cpu_trained_and_reference()
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    loss, _ = masked_lm_loss(model, idx, torch.randint(0, TINY.vocab_size, (3, 10)), head_loss=blocked_head_loss)
    with profile(record_shapes=True) as prof:
        loss.backward()
    whole = [TINY.vocab_size, TINY.emb_dim]
    copies = [event.key for event in prof.events()
              if event.key in ("aten::copy_", "aten::add", "aten::clone") and whole in event.input_shapes]
    assert copies == []
    rows = [event for event in prof.events() if event.key == "aten::index_add_"]
    assert len(rows) == 1 and rows[0].input_shapes[0] == whole
