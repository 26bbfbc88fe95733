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
