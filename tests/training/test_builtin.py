"""The embedded default model is built once into medsft's cache, and a build left incomplete there (a killed
process, a partial copy) is rebuilt rather than refused forever."""

from __future__ import annotations

from medsft.model.builtin import tiny_model


def test_an_incomplete_cached_build_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSFT_HOME", str(tmp_path))
    target = tmp_path / "models" / f"tiny-qwen2-v{tiny_model.TINY_BUILD_VERSION}"
    target.mkdir(parents=True)
    (target / "tokenizer.json").write_text("{}")  # what a killed build could leave
    assert tiny_model.builtin_model_dir(tiny_model.TINY_MODEL) == target
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(target)
    assert config.model_type == "qwen2" and (target / "model.safetensors").stat().st_size > 0
    assert len(AutoTokenizer.from_pretrained(target)) == config.vocab_size
    assert not list(target.parent.glob(".building-*")), "no staging directory left behind"
