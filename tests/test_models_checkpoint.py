"""Checkpoints: whole-pipeline round trip, SAM/MAE/heads formats, and one-line errors for bad files."""

import pickle

import pytest
import torch

from emseg_rt.errors import EmsegError
from emseg_rt.models import build


def test_whole_pipeline_state_dict_round_trips_exactly(tmp_path):
    original = build("scsam-tiny").eval()
    path = tmp_path / "scsam.pt"
    torch.save(original.state_dict(), path)
    torch.manual_seed(99)  # a different random init, overwritten by the checkpoint
    restored = build("scsam-tiny", checkpoint=path).eval()
    for key, value in original.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    tiles = original.example_inputs(batch=1, seed=4)["tiles"]
    with torch.no_grad():
        assert torch.equal(original(tiles)["logits"], restored(tiles)["logits"])


def test_heads_only_checkpoint_loads_the_head(tmp_path):
    trained = build("scsam-tiny")
    heads = {key: value for key, value in trained.state_dict().items() if key.startswith("head.")}
    path = tmp_path / "heads.pt"
    torch.save({"state_dict": heads}, path)
    model = build("scsam-tiny", checkpoint=path)
    assert torch.equal(model.head.class_prompt_encoder.prototypes, trained.head.class_prompt_encoder.prototypes)


def test_mae_checkpoint_with_pretraining_decoder_loads(tmp_path):
    donor = build("mae-star-tiny")
    vit = {key.removeprefix("encoders.mae_encoder.vit."): value
           for key, value in donor.state_dict().items() if key.startswith("encoders.mae_encoder.vit.")}
    vit["mask_token"] = torch.zeros(1, 1, 32)
    vit["decoder_embed.weight"] = torch.zeros(16, 32)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": vit}, path)
    model = build("scsam-tiny", checkpoint=path)
    assert torch.equal(model.encoders["mae_encoder"].vit.pos_embed, donor.encoders["mae_encoder"].vit.pos_embed)


def test_several_checkpoints_compose(tmp_path):
    donor = build("scsam-tiny")
    state = donor.state_dict()
    paths = []
    for part in ("encoders.sam_encoder.", "encoders.mae_encoder.", "head."):
        path = tmp_path / f"{part.strip('.')}.pt"
        torch.save({k: v for k, v in state.items() if k.startswith(part)}, path)
        paths.append(path)
    model = build("scsam-tiny", checkpoint=paths)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_partial_checkpoint_names_the_missing_keys(tmp_path):
    state = build("scsam-tiny").state_dict()
    del state["head.class_prompt_encoder.prototypes"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(EmsegError, match=r"partial.*missing keys head\.class_prompt_encoder\.prototypes"):
        build("scsam-tiny", checkpoint=path)


def test_checkpoint_of_another_model_names_unexpected_keys(tmp_path):
    path = tmp_path / "scsam.pt"
    torch.save(build("scsam-tiny").state_dict(), path)
    with pytest.raises(EmsegError, match=r"does not fit sam-star-tiny: unexpected keys encoders\.mae_encoder"):
        build("sam-star-tiny", checkpoint=path)


def test_wrong_shapes_are_named(tmp_path):
    path = tmp_path / "five_classes.pt"
    torch.save(build("scsam-tiny", classes=("a", "b", "c", "d", "e")).state_dict(), path)
    with pytest.raises(EmsegError, match=r"wrong shapes.*prototypes \(5, 32\) vs \(3, 32\)"):
        build("scsam-tiny", checkpoint=path)


def test_missing_file_garbage_and_unsafe_pickles_are_refused(tmp_path):
    with pytest.raises(EmsegError, match="no such file"):
        build("scsam-tiny", checkpoint=tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(EmsegError, match="not a readable weights-only torch checkpoint"):
        build("scsam-tiny", checkpoint=garbage)
    unsafe = tmp_path / "unsafe.pt"
    with unsafe.open("wb") as handle:
        pickle.dump({"weights": pickle.Pickler}, handle)
    with pytest.raises(EmsegError, match="weights-only"):
        build("scsam-tiny", checkpoint=unsafe)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(EmsegError, match="expected a state dict"):
        build("scsam-tiny", checkpoint=tensor_file)


def test_a_directory_given_as_checkpoint_is_named_as_such(tmp_path):
    import pytest

    from emseg_rt.errors import EmsegError
    from emseg_rt.models import build

    with pytest.raises(EmsegError, match="is a directory, not a checkpoint file"):
        build("his4mae-tiny", checkpoint=tmp_path)
