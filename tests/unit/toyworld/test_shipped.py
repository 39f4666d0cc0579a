"""The base model and tiny CLIP shipped inside the package (mmpo.toyworld.shipped)."""

import json

import pytest

from mmpo.toyworld import base_model, clip, shipped
from mmpo.toyworld.base_model import BaseModelRecipe, ensure_base_model
from mmpo.toyworld.clip import TinyCLIPRecipe, ensure_tiny_clip
from mmpo.toyworld.pipeline import DemoOptions
from mmpo.toyworld.scenes import WorldConfig


def demo_recipe() -> BaseModelRecipe:
    """The recipe `mmpo demo` asks for with its default options."""
    opts = DemoOptions()
    return BaseModelRecipe(world=WorldConfig(seed=opts.seed), n_scenes=opts.base_scenes, steps=opts.base_steps,
                           seed=opts.seed)


def test_the_default_recipes_are_shipped_and_the_demo_asks_for_them():
    assert demo_recipe().fingerprint() == BaseModelRecipe().fingerprint()
    base = shipped.shipped_checkpoint("base", BaseModelRecipe())
    tiny_clip = shipped.shipped_checkpoint("clip", TinyCLIPRecipe())
    assert base is not None and tiny_clip is not None, "run `mmpo base-model --rebuild` and commit the result"
    assert (base / "model.safetensors").stat().st_size < 20e6 and (tiny_clip / "model.safetensors").stat().st_size < 20e6
    # only the current recipes' copies are shipped
    assert sorted(p.name for p in shipped.SHIPPED_DIR.iterdir()) == sorted([base.name, tiny_clip.name])


def test_the_shipped_checkpoints_load_and_run():
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmpo.scoring.clip import CLIPScorer

    path = shipped.shipped_checkpoint("base", BaseModelRecipe())
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    inputs = processor(images=[Image.new("RGB", (64, 64), "white")], text=[f"{processor.image_token} a"],
                       return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
    scorer = CLIPScorer(shipped.shipped_checkpoint("clip", TinyCLIPRecipe()), device="cpu")
    assert scorer.max_text_tokens > 0


def test_the_default_recipe_takes_the_shipped_model_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "build_base_model", lambda *a, **k: pytest.fail("built instead of shipped"))
    monkeypatch.setattr(clip, "train_tiny_clip", lambda *a, **k: pytest.fail("trained instead of shipped"))
    path, ready = ensure_base_model(demo_recipe(), tmp_path)
    assert ready and path.parent == shipped.SHIPPED_DIR
    path, ready = ensure_tiny_clip(tmp_path)
    assert ready and path.parent == shipped.SHIPPED_DIR
    assert list(tmp_path.iterdir()) == []  # nothing written to the cache


def fake_build(folder, recipe):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights").write_text("w")
    (folder / "recipe.json").write_text(json.dumps(recipe.to_dict()))  # what the real builders write
    return folder


def test_without_shipped_the_recipe_is_built_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "build_base_model", lambda recipe, folder: fake_build(folder, recipe))
    path, ready = ensure_base_model(demo_recipe(), tmp_path, shipped=False)
    assert not ready and path.parent == tmp_path and (path / "weights").exists()
    assert ensure_base_model(demo_recipe(), tmp_path, shipped=False) == (path, True)  # cached now


def test_a_copy_whose_recipe_is_not_the_one_asked_for_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    recipe = BaseModelRecipe(steps=7)
    fake_build(tmp_path / f"base-{recipe.fingerprint()}", recipe)
    assert shipped.shipped_checkpoint("base", recipe) == tmp_path / f"base-{recipe.fingerprint()}"
    other = BaseModelRecipe(steps=8)
    (tmp_path / f"base-{other.fingerprint()}").mkdir()
    (tmp_path / f"base-{other.fingerprint()}" / "recipe.json").write_text(
        (tmp_path / f"base-{recipe.fingerprint()}" / "recipe.json").read_text())  # renamed copy of another recipe
    assert shipped.shipped_checkpoint("base", other) is None
    assert shipped.shipped_checkpoint("clip", recipe) is None


def test_rebuild_replaces_the_shipped_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "build_base_model",
                        lambda recipe, folder, overwrite: fake_build(folder, recipe))
    monkeypatch.setattr(clip, "train_tiny_clip", lambda folder, recipe, overwrite: fake_build(folder, recipe))
    (tmp_path / "base-000000000000").mkdir()  # an older recipe's copy
    written = shipped.rebuild_shipped(into=tmp_path)
    assert [p.name for p in written] == [f"base-{BaseModelRecipe().fingerprint()}",
                                         f"clip-{TinyCLIPRecipe().fingerprint()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
