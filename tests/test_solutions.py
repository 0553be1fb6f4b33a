"""The reference answer: shapes, gradients and errors on small odd sizes, and fast path = manual path."""
import pytest
import torch
import torch.nn.functional as F

import solutions as S

B, C, H, W, P, E, NH = 2, 3, 21, 35, 7, 15, 3
N = (H // P) * (W // P)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_patch_embedding_shapes_and_row_major_order():
    embed = S.PatchEmbedding(in_channels=C, patch_size=P, embed_dim=E)
    x = torch.randn(B, C, H, W, requires_grad=True)
    tokens = embed(x)
    assert tokens.shape == (B, N, E)
    # token i must depend on patch (i // (W/P), i % (W/P)) only
    i = 4
    tokens[0, i].sum().backward()
    depends = x.grad[0].abs().sum(0) > 0
    row, col = divmod(i, W // P)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[row * P:(row + 1) * P, col * P:(col + 1) * P] = True
    assert torch.equal(depends, expected)


def test_patch_embedding_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by the patch size 7"):
        S.PatchEmbedding(C, P, E)(torch.randn(1, C, 20, 21))


def test_class_token_prepended_and_learnable():
    cls = S.ClassToken(E)
    x = torch.randn(B, N, E)
    out = cls(x)
    assert out.shape == (B, N + 1, E)
    assert torch.equal(out[:, 1:], x)
    assert torch.equal(out[0, 0], out[1, 0])
    assert any(p is cls.cls_token for p in cls.parameters())
    out.sum().backward()
    assert cls.cls_token.grad is not None and cls.cls_token.grad.abs().sum() > 0


def test_scaled_dot_product_attention_matches_torch():
    q, k, v = (torch.randn(B, NH, N, E // NH) for _ in range(3))
    out, weights = S.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, NH, N))
    assert weights.shape == (B, NH, N, N)


def test_attention_fast_path_equals_manual_path():
    attn = S.MultiHeadSelfAttention(E, NH)
    x = torch.randn(B, N + 1, E)
    fast = attn(x)
    manual, weights = attn(x, return_attention=True)
    torch.testing.assert_close(fast, manual, rtol=1e-5, atol=1e-6)
    assert weights.shape == (B, NH, N + 1, N + 1)
    assert [t.shape for t in attn.qkv(x)] == [(B, NH, N + 1, E // NH)] * 3


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="embed_dim=16 is not divisible by num_heads=3"):
        S.MultiHeadSelfAttention(16, 3)


@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_encoder_block_shapes_attention_and_layer_scale(layer_scale):
    block = S.TransformerEncoderBlock(E, NH, mlp_ratio=2.0, layer_scale=layer_scale)
    x = torch.randn(B, N + 1, E)
    out, weights = block(x, return_attention=True)
    assert out.shape == x.shape and weights.shape == (B, NH, N + 1, N + 1)
    torch.testing.assert_close(block(x), out, rtol=1e-5, atol=1e-6)
    has_gamma = any(name.endswith("gamma") for name, _ in block.named_parameters())
    assert has_gamma == (layer_scale is not None)


def test_encoder_block_is_identity_with_zeroed_linears():
    block = S.TransformerEncoderBlock(E, NH)
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    x = torch.randn(B, N + 1, E)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_head_shapes_and_pooling(pool):
    head = S.ClassificationHead(E, 4, pool=pool)
    x = torch.randn(B, N + 1, E, requires_grad=True)
    logits = head(x)
    assert logits.shape == (B, 4)
    logits.sum().backward()
    other_tokens_matter = x.grad[:, 1:].abs().sum() > 0
    assert other_tokens_matter == (pool == "mean")


def test_head_rejects_unknown_pool():
    with pytest.raises(ValueError, match="Unknown pool 'max'"):
        S.ClassificationHead(E, 3, pool="max")


def test_vision_transformer_shapes_and_every_parameter_gets_a_gradient():
    model = S.VisionTransformer(img_size=35, patch_size=P, in_channels=C, num_classes=5,
                                embed_dim=E, depth=2, num_heads=NH, mlp_ratio=2.0)
    x = torch.randn(B, C, 35, 35)
    assert model.forward_features(x).shape == (B, 25 + 1, E)
    logits = model(x)
    assert logits.shape == (B, 5)
    logits.square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert not torch.allclose(logits[0], logits[1])


def test_vision_transformer_course_config_and_batch_independence():
    model = S.VisionTransformer(depth=1).train()
    x = torch.rand(2, 1, 256, 256)
    alone = model(x[:1])
    together = model(x)
    assert together.shape == (2, 3)
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)


def test_training_functions_lower_the_loss_and_evaluate_is_read_only():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 14, 14)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = S.VisionTransformer(img_size=14, patch_size=7, num_classes=2, embed_dim=16,
                                depth=1, num_heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    criterion = torch.nn.CrossEntropyLoss()
    first = S.train_one_epoch(model, loader, optimizer, criterion, "cpu")
    for _ in range(8):
        last = S.train_one_epoch(model, loader, optimizer, criterion, "cpu")
    assert last < first
    before = [p.detach().clone() for p in model.parameters()]
    accuracy, loss = S.evaluate(model, loader, criterion, "cpu")
    assert 0.5 < accuracy <= 1.0 and loss > 0
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
