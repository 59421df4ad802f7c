"""HEAR 2021 API: a replay of the validator's checks on a tiny random encoder (the tools
themselves run in tests/test_hear_tools.py)."""

import jax
import numpy as np
import pytest
from model_utils import small_model

from msm_mae_jax.data.normalization import NormStats
from msm_mae_jax.data.tf_setup import tensorflow
from msm_mae_jax.features import hear
from msm_mae_jax.model import artifact, mae

tf = tensorflow()

CFG = small_model()


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    params = mae.init_params(CFG, jax.random.key(2))["encoder"]
    path = tmp_path_factory.mktemp("hear_model")
    return artifact.save_model_dir(str(path), CFG, params, NormStats(-6.0, 4.0), source="init")


@pytest.fixture(scope="module")
def model(saved_dir):
    return hear.load_model(saved_dir)


def _white_noise(n, seconds, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, round(seconds * 16000))).astype(np.float32)


def _tf_float32(x):
    """The API's outputs are TF float32 tensors (hear-eval-kit calls `.numpy()` on them)."""
    assert isinstance(x, tf.Tensor) and x.dtype == tf.float32, (type(x), x.dtype)
    return x.numpy()


def scene(audio, model):
    return _tf_float32(hear.get_scene_embeddings(audio, model))


def timestamps(audio, model):
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    return _tf_float32(emb), _tf_float32(ts)


def test_model_attributes(model):
    assert isinstance(model, tf.Module)  # what hear-validator and hear-eval-kit accept
    assert model.variables == ()  # the weights live in the JAX runtime
    assert model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int)
    assert isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 5 * 64


def test_empty_path_is_a_clear_error():
    with pytest.raises(ValueError, match="no weights are bundled"):
        hear.load_model("")
    with pytest.raises(ValueError, match="model_file_path"):
        hear.load_model()


# The validator's durations -> (time steps, first timestamp in ms). A step is one 16-frame patch
# column, 16 x 10 ms = 160 ms, nominally centred at (t + 0.5) * 160 ms; the centres move down
# together just enough for the last one to stay inside the clip:
#   1.07 s: 108 frames, 7 steps, last centre 1040 ms <= 1070: first at 80 ms;
#   1.98 s: 199 frames, 13 steps, last centre 2000 > 1980: moved down 20 ms, first at 60 ms;
#   4.00 s: 401 frames, 26 steps, last centre 4080 > 4000: moved down 80 ms, first at 0 ms.
VALIDATOR_CASES = [(1.07, 7, 80.0), (1.98, 13, 60.0), (4.0, 26, 0.0)]


@pytest.mark.parametrize("seconds,steps,first_ms", VALIDATOR_CASES)
def test_timestamp_embeddings_validator(model, seconds, steps, first_ms):
    audio = _white_noise(2, seconds)
    emb, ts = timestamps(audio, model)
    assert steps == int(np.ceil((1 + audio.shape[1] // 160) / 16))
    assert emb.shape == (2, steps, model.timestamp_embedding_size) and ts.shape == (2, steps)
    assert np.isfinite(emb).all()
    gaps = np.diff(ts, axis=1)
    assert np.abs(gaps - gaps.mean()).max() <= 1.0  # the validator: evenly spaced within 1 ms
    assert ts[:, -1].max() <= seconds * 1000.0  # the validator: inside the audio
    # Milliseconds (the original returned seconds): 160 ms apart, at the values derived above.
    np.testing.assert_allclose(gaps, 160.0, atol=1e-3)
    np.testing.assert_allclose(ts, np.tile(first_ms + 160.0 * np.arange(steps), (2, 1)), atol=1e-3)


def test_scene_embeddings_validator(model):
    audio = _white_noise(4, 2.74, seed=1)
    emb = scene(audio, model)
    assert emb.shape == (4, model.scene_embedding_size)
    assert np.isfinite(emb).all()
    # Dataset normalisation: a clip's embedding does not depend on its batch.
    np.testing.assert_allclose(emb[1:2], scene(audio[1:2], model), atol=2e-5)
    # and the clips differ from one another
    assert np.abs(emb[0] - emb[1]).max() > 1e-4


def test_batch_normalization_option(saved_dir, model):
    audio = _white_noise(2, 1.0, seed=2) * np.array([[1.0], [0.01]], np.float32)
    batch_model = hear.load_model(saved_dir, normalization="batch")
    got = scene(audio, batch_model)
    want = batch_model.runtime.scene_embeddings(audio, normalization="batch")
    np.testing.assert_allclose(got, want, atol=0)
    default = scene(audio, model)
    assert np.abs(got - default).max() > 1e-3
    # The numpy path: the runtime with the model's normalisation gives the same numbers.
    np.testing.assert_array_equal(model.runtime.scene_embeddings(audio), default)
    # hear-eval-kit's --model-options is JSON: (mean, std) arrives as a list.
    stats_model = hear.load_model(saved_dir, normalization=[-6.0, 4.0])
    np.testing.assert_array_equal(scene(audio, stats_model), default)
    shifted = hear.load_model(saved_dir, normalization=[-5.0, 4.0])
    assert np.abs(scene(audio, shifted) - default).max() > 1e-3
    with pytest.raises(ValueError, match="normalization"):
        hear.load_model(saved_dir, normalization="per-clip")


def test_framework_tensors(model):
    audio = _white_noise(2, 0.5, seed=3)
    want = scene(audio, model)
    np.testing.assert_allclose(scene(tf.constant(audio), model), want, atol=0)
    torch = pytest.importorskip("torch")
    emb, ts = timestamps(torch.from_numpy(audio), model)
    np.testing.assert_allclose(emb.mean(axis=1), want, atol=1e-6)
    np.testing.assert_allclose(scene(torch.from_numpy(audio), model), want, atol=0)


def test_wrong_rank(model):
    with pytest.raises(ValueError, match="n_sounds"):
        hear.get_scene_embeddings(np.zeros(16000, np.float32), model)


def test_audio_far_outside_full_scale_is_refused(model):
    """Audio scaled as int16 values (±1000 here) is refused in one clear error, as `embed`
    refuses such a file; a little clipping (a peak of 15) is not."""
    audio = _white_noise(2, 0.5, seed=4)
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match=r"magnitude 1e\+03, far outside \[-1, 1\]"):
            fn(audio * 1000, model)
    with pytest.raises(ValueError, match=r"audio\[1\] has samples of magnitude 20"):
        model.runtime.encode([audio[0], np.full(8000, -20.0, np.float32)])
    assert np.isfinite(scene(audio * 15, model)).all()
