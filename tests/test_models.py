"""Model loading is safe by default: safetensors only (pickle weights need allow_pickle), no hub without
allow_network, and the messages say what was tried and what to set."""

import pytest
import torch

from ift_utils.models import ModelError, load_model, resolve_model


@pytest.fixture
def pickle_folder(tiny, tmp_path):
    """The tiny model saved the old way: pytorch_model.bin (a pickle) and no safetensors."""
    model, tok = tiny
    out = tmp_path / "pickled"
    out.mkdir()
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    model.config.save_pretrained(out)
    tok.save_pretrained(out)
    assert (out / "pytorch_model.bin").exists() and not list(out.glob("*.safetensors"))
    return out


def test_pickle_weights_are_refused_unless_allowed(pickle_folder, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("IFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=r"pickle weights only \(pytorch_model.bin\).*allow_pickle: true"):
        load_model(str(pickle_folder))
    model, _ = load_model(str(pickle_folder), allow_pickle=True)
    converted = resolve_model(str(pickle_folder), allow_pickle=True)
    assert converted.startswith(str(tmp_path / "cache" / "from-pickle"))
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny[0](ids).logits)


def test_unknown_model_names_what_was_tried():
    with pytest.raises(ModelError, match=r"not a registry name .*smollm2-135m-instruct.*allow_network: true"):
        resolve_model("no-such/model")


def test_a_gguf_split_over_packages_is_found_in_order_and_joined(tmp_path, monkeypatch):
    from ift_utils import models

    dirs = {}
    for i, chunk in enumerate([b"GGUF-head|", b"middle|", b"tail"]):
        d = tmp_path / f"pkg{i}" / "data"
        d.mkdir(parents=True)
        (d / f"m.gguf.part0{i}").write_bytes(chunk)
        dirs[f"pkg-part{i}"] = d.parent
    monkeypatch.setitem(models.REGISTRY, "split-model", models.PackagedModel(
        ("pkg-part2", "pkg-part0", "pkg-part1"), ".gguf", "0" * 64, base=True, chunks="m.gguf.part*"))
    monkeypatch.setattr(models, "_package_dir", lambda pkg: dirs[pkg])
    pieces = models.find_gguf("split-model")
    assert [p.name for p in pieces] == ["m.gguf.part00", "m.gguf.part01", "m.gguf.part02"]
    assert models.join_pieces(pieces, tmp_path / "m.gguf").read_bytes() == b"GGUF-head|middle|tail"
