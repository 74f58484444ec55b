"""FAFM, the class prompt encoder and the losses against direct transcriptions of ScSAM's equations."""

import math

import pytest
import torch

from emseg_rt.models.class_merge import ClassMerge
from emseg_rt.models.class_prompt_encoder import ClassPromptEncoder, class_embeddings, ntxent_loss
from emseg_rt.models.configs import AlignmentConfig, ClassPromptConfig, FafmConfig
from emseg_rt.models.fafm import Fafm, cosine_alignment_loss


def mlp_at(x, fc_in, fc_out):
    """Eq. 2 at one position: L1(ReLU(L2(e)))."""
    return fc_out.weight @ torch.relu(fc_in.weight @ x + fc_in.bias) + fc_out.bias


def conv3x3_at(x, weight, i, j):
    """One output pixel of a zero-padded 3×3 convolution without bias, by explicit sums."""
    c_out, c_in, _, _ = weight.shape
    _, h, w = x.shape
    out = torch.zeros(c_out, dtype=x.dtype)
    for di in range(-1, 2):
        for dj in range(-1, 2):
            if 0 <= i + di < h and 0 <= j + dj < w:
                out += weight[:, :, di + 1, dj + 1] @ x[:, i + di, j + dj]
    return out


def conv3x3(x, weight):
    _, h, w = x.shape
    out = torch.stack([torch.stack([conv3x3_at(x, weight, i, j) for j in range(w)], -1) for i in range(h)], -2)
    return out


def group_norm(x, groups, gn):
    c = x.shape[0]
    out = torch.empty_like(x)
    per = c // groups
    for g in range(groups):
        block = x[g * per : (g + 1) * per]
        mean = block.mean()
        var = ((block - mean) ** 2).mean()
        out[g * per : (g + 1) * per] = (block - mean) / torch.sqrt(var + gn.eps)
    return out * gn.weight[:, None, None] + gn.bias[:, None, None]


def channel_attention(x, cam):
    """CBAM: x · σ(MLP(avg) + MLP(max)), MLP = W2 ReLU(W1 ·)."""
    w1 = cam.mlp[0].weight[:, :, 0, 0]
    w2 = cam.mlp[2].weight[:, :, 0, 0]
    avg = x.mean(dim=(1, 2))
    peak = x.amax(dim=(1, 2))
    weights = torch.sigmoid(w2 @ torch.relu(w1 @ avg) + w2 @ torch.relu(w1 @ peak))
    return x * weights[:, None, None]


def test_fafm_matches_equations_2_to_5():
    torch.manual_seed(11)
    n, c_s, c_m, h, w = 8, 6, 10, 3, 4
    config = FafmConfig(alignment=AlignmentConfig(hidden_dim=5), gn_groups=2, cam_reduction=2)
    fafm = Fafm(c_s, c_m, n, config).double().eval()
    with torch.no_grad():
        for param in fafm.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    e_s = torch.randn(2, c_s, h, w, dtype=torch.float64)
    e_m = torch.randn(2, c_m, h, w, dtype=torch.float64)
    with torch.no_grad():
        v_f = fafm(e_s, e_m)
        aligned_s, aligned_m = fafm.align(e_s, e_m)
        for b in range(2):
            # eq. 2 at every position
            hat_s = torch.stack([torch.stack([mlp_at(e_s[b, :, i, j], fafm.align_sam.fc_in, fafm.align_sam.fc_out)
                                              for j in range(w)], -1) for i in range(h)], -2)
            hat_m = torch.stack([torch.stack([mlp_at(e_m[b, :, i, j], fafm.align_mae.fc_in, fafm.align_mae.fc_out)
                                              for j in range(w)], -1) for i in range(h)], -2)
            torch.testing.assert_close(aligned_s[b], hat_s)
            torch.testing.assert_close(aligned_m[b], hat_m)
            # eq. 4: V_c = CAM(Conv(Conv(Concat(Ê_M, Ê_S)))) with GroupNorm + ReLU after each conv
            first, second = fafm.fusion
            x = torch.cat([hat_m, hat_s])
            x = torch.relu(group_norm(conv3x3(x, first[0].weight), 2, first[1]))
            x = torch.relu(group_norm(conv3x3(x, second[0].weight), 2, second[1]))
            v_c = channel_attention(x, fafm.fusion_attention)
            # eq. 5: V_f = Concat(V_c, CAM(Conv(Ê_S))), 1×1 conv with bias
            aux = torch.einsum("oc,chw->ohw", fafm.aux.weight[:, :, 0, 0], hat_s) + fafm.aux.bias[:, None, None]
            expected = torch.cat([v_c, channel_attention(aux, fafm.aux_attention)])
            torch.testing.assert_close(v_f[b], expected)
    assert v_f.shape == (2, n, h, w)


def test_cosine_alignment_loss_is_equation_3():
    torch.manual_seed(12)
    a, b = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    cosines = [float(a[i, :, y, x] @ b[i, :, y, x] / (a[i, :, y, x].norm() * b[i, :, y, x].norm()))
               for i in range(2) for y in range(3) for x in range(3)]
    assert float(cosine_alignment_loss(a, b)) == pytest.approx(1 - sum(cosines) / len(cosines), rel=1e-5)
    assert float(cosine_alignment_loss(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_class_prompt_encoder_matches_equations_6_and_7(similarity):
    torch.manual_seed(13)
    k, n_ch, grid, n_tok = 3, 6, 2, 2
    config = ClassPromptConfig(similarity=similarity, residual_mlp=similarity == "cosine", tokens_per_class=n_tok,
                               dense_hidden=4, sparse_hidden=5, residual_hidden=4)
    enc = ClassPromptEncoder(k, n_ch, grid, config).double().eval().requires_grad_(False)
    with torch.no_grad():
        for param in enc.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    fused = torch.randn(2, n_ch, grid, grid, dtype=torch.float64)
    with torch.no_grad():
        dense, sparse = enc(fused)
    assert dense.shape == (2 * k, n_ch, grid, grid) and sparse.shape == (2 * k, k * n_tok, n_ch)
    positions = [(i, j) for i in range(grid) for j in range(grid)]
    for b in range(2):
        activated = {}  # (class, position) → V_a
        for c in range(k):
            for pos in positions:
                v = fused[b, :, pos[0], pos[1]]
                proto = enc.prototypes[c]
                s = float(v @ proto / (v.norm() * proto.norm())) if similarity == "cosine" else float(v @ proto)
                v_a = v * s + v  # eq. 7
                if enc.residual_mlp is not None:
                    fc1, fc2 = enc.residual_mlp[0], enc.residual_mlp[2]
                    v_a = v_a + fc2.weight @ torch.relu(fc1.weight @ v_a + fc1.bias) + fc2.bias
                activated[c, pos] = v_a
        # dense prompt of (b, c): 1×1 conv 256→128, ReLU, 1×1 conv 128→256 at every position
        d1, d2 = enc.dense_branch[0], enc.dense_branch[2]
        for c in range(k):
            for pos in positions:
                v_a = activated[c, pos]
                expected = d2.weight[:, :, 0, 0] @ torch.relu(d1.weight[:, :, 0, 0] @ v_a + d1.bias) + d2.bias
                torch.testing.assert_close(dense[b * k + c, :, pos[0], pos[1]], expected)
        # sparse tokens of class j: learned mixing of positions (Conv1d HW→hidden→n), then ± embeddings
        for target in range(k):
            for j in range(k):
                stacked = torch.stack([activated[j, pos] for pos in positions])  # (HW, N)
                hidden = torch.relu(enc.sparse_pool_in.weight @ stacked + enc.sparse_pool_in.bias[:, None])
                tokens = enc.sparse_pool_out.weight @ hidden + enc.sparse_pool_out.bias[:, None]  # (n, N)
                tokens = tokens + (enc.positive_embedding if j == target else enc.negative_embedding)
                got = sparse[b * k + target, j * n_tok : (j + 1) * n_tok]
                torch.testing.assert_close(got, tokens)


def test_ntxent_loss_matches_hand_computation():
    torch.manual_seed(14)
    prototypes = torch.randn(3, 4)
    embeddings = torch.randn(5, 4)
    class_ids = torch.tensor([0, 1, 0, 2, 1])
    tau = 0.5

    def sim(a, b):
        return float(a @ b / (a.norm() * b.norm())) / tau

    terms = []
    for i, c in enumerate(class_ids.tolist()):
        pos = math.exp(sim(prototypes[c], embeddings[i]))
        neg = sum(math.exp(sim(prototypes[c], embeddings[j])) for j in range(5) if class_ids[j] != c)
        terms.append(-math.log(pos / (pos + neg)))
    assert float(ntxent_loss(prototypes, embeddings, class_ids, tau)) == pytest.approx(sum(terms) / 5, rel=1e-5)


def test_class_embeddings_average_fused_features_over_each_present_class():
    fused = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    masks = torch.zeros(2, 3, 2, 2)
    masks[0, 0, 0, :] = 1  # image 0, class 0: top row
    masks[1, 2, :, 1] = 1  # image 1, class 2: right column
    embeddings, ids = class_embeddings(fused, masks)
    assert ids.tolist() == [0, 2]
    torch.testing.assert_close(embeddings[0], fused[0, :, 0, :].mean(dim=1))
    torch.testing.assert_close(embeddings[1], fused[1, :, :, 1].mean(dim=1))


def test_class_merge_takes_argmax_with_background_below_zero():
    merge = ClassMerge(tile=2, num_classes=3)
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]],
                            [[-2.0, 1.0], [0.7, -1.0]],
                            [[-0.5, 3.0], [0.1, -0.1]]]])
    out = merge(logits)
    assert out["labels"].tolist() == [[[0, 3], [2, 0]]]
    assert out["labels"].dtype == torch.uint8
