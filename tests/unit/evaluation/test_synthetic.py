"""Exact synthetic-world evaluation: an oracle and a fixed liar stand in for the model, then one
smoke run with the untrained tiny LLaVA."""

from __future__ import annotations

import pytest

import mmpo.evaluation.synthetic as synthetic
from mmpo.evaluation.synthetic import attribute_errors
from mmpo.toyworld.evaluate import evaluate_world
from mmpo.toyworld.model import build_processor, build_tiny_vlm, train_tokenizer
from mmpo.toyworld.pope import build_pope_questions, cooccurrence_counts
from mmpo.toyworld.scenes import (
    COLOURS,
    DESCRIBE_PROMPT,
    SHAPES,
    Scene,
    SceneObject,
    WorldConfig,
    sample_scenes,
)

FLOAT_KEYS = ("chair_i", "chair_s", "coverage", "attribute_error", "pope_accuracy",
              "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")


def test_attribute_errors_hand_computed():
    """Scene: red circle, blue square.
    "a small red circle is ..."    -> (red, circle)  checked, right
    "a large green square is ..."  -> (green, square) checked, wrong
    "a blue star is here"          -> star is absent: CHAIR's business, skipped
    "circles are nice"             -> no colour, skipped
    -> (wrong, checked) = (1, 2)."""
    scene = Scene("s", (SceneObject("circle", "red", "small", "top left", (0, 0, 1, 1)),
                        SceneObject("square", "blue", "large", "bottom right", (0, 0, 1, 1))))
    response = ("a small red circle is at the top left . a large green square is at the top right . "
                "a blue star is here . circles are nice .")
    assert attribute_errors(response, scene, SHAPES, COLOURS) == (1, 2)
    assert attribute_errors(scene.description(), scene, SHAPES, COLOURS) == (0, 2)
    assert attribute_errors("", scene, SHAPES, COLOURS) == (0, 0)


def fake_generator(scenes, answer_description, answer_question, asked):
    """A stand-in for ``generate_responses`` that recognises each scene by its rendered pixels."""
    by_pixels = {s.render().tobytes(): s for s in scenes}

    def generate(model, processor, images, prompts, **kwargs):
        prompts = [prompts] * len(images) if isinstance(prompts, str) else prompts
        asked.extend(prompts)
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            scene = by_pixels[image.tobytes()]
            if prompt == DESCRIBE_PROMPT:
                out.append(answer_description(scene))
            else:
                out.append(answer_question(scene, prompt.split()[3]))   # "is there a <shape> ..."
        return out

    return generate


def test_oracle_scores_perfectly(monkeypatch):
    scenes = sample_scenes(WorldConfig(seed=7).held_out(), 12)
    train = sample_scenes(WorldConfig(seed=8), 50)
    asked: list[str] = []
    monkeypatch.setattr(synthetic, "generate_responses", fake_generator(
        scenes, Scene.description, lambda s, shape: "Yes." if shape in s.shapes else "no , there is not .", asked))
    result = evaluate_world(None, None, scenes, pope_split_scenes_for_stats=train, n_samples=3)

    questions = build_pope_questions(scenes, "adversarial", cooccurrence=cooccurrence_counts(train))
    assert asked == [DESCRIBE_PROMPT] * 12 + [q.question for q in questions]   # negatives from train stats
    n_yes = sum(q.label == "yes" for q in questions)
    assert result["chair_i"] == result["chair_s"] == result["attribute_error"] == 0.0
    assert result["coverage"] == 1.0
    assert result["mentions_per_response"] == pytest.approx(sum(len(s.shapes) for s in scenes) / 12)
    assert result["pope_accuracy"] == result["pope_precision"] == result["pope_recall"] == result["pope_f1"] == 1.0
    assert result["pope_yes_ratio"] == pytest.approx(n_yes / len(questions))
    assert result["pope_unparsed"] == 0.0 and result["pope_n"] == len(questions)
    assert result["samples"] == [{"scene_id": s.id, "response": s.description(), "truth": s.description()}
                                 for s in scenes[:3]]


def test_liar_hand_computed(monkeypatch):
    """Two scenes, {circle} and {square, star}. The liar always says "a blue circle and a cross ."
    and answers every question "yes".

    CHAIR: mentions {circle, cross} twice; hallucinated {cross}, {circle, cross} -> 3/4;
    both responses hallucinate -> chair_s 1; covered 1 of 3 true categories -> 1/3.
    Attribute: only scene 1 has a circle; it is red, the liar says blue -> 1/1.
    POPE (random split, 1 negative each -> 3 yes + 2 no questions), all answered yes:
    accuracy 3/5, precision 3/5, recall 1, f1 3/4, yes_ratio 1."""
    def obj(shape, colour, quadrant):
        return SceneObject(shape, colour, "small", quadrant, (0, 0, 20, 20) if quadrant == "top left" else (40, 40, 60, 60))
    scenes = [Scene("a", (obj("circle", "red", "top left"),)),
              Scene("b", (obj("square", "blue", "top left"), obj("star", "green", "bottom right")))]
    monkeypatch.setattr(synthetic, "generate_responses", fake_generator(
        scenes, lambda s: "a blue circle and a cross .", lambda s, shape: "yes", []))
    r = evaluate_world(None, None, scenes, pope_split="random", n_negatives_per_scene=1)
    assert r["chair_i"] == pytest.approx(3 / 4) and r["chair_s"] == 1.0
    assert r["coverage"] == pytest.approx(1 / 3) and r["mentions_per_response"] == 2.0
    assert r["attribute_error"] == 1.0
    assert r["pope_accuracy"] == pytest.approx(3 / 5) and r["pope_precision"] == pytest.approx(3 / 5)
    assert r["pope_recall"] == 1.0 and r["pope_f1"] == pytest.approx(3 / 4) and r["pope_yes_ratio"] == 1.0


def test_smoke_with_untrained_tiny_vlm():
    tokenizer = train_tokenizer()
    model, processor = build_tiny_vlm(tokenizer, seed=0), build_processor(tokenizer)
    scenes = sample_scenes(WorldConfig(seed=1).held_out(), 4)
    result = evaluate_world(model, processor, scenes, pope_split_scenes_for_stats=sample_scenes(WorldConfig(), 20),
                                max_new_tokens=8, pope_max_new_tokens=2, n_samples=2)
    assert all(isinstance(result[k], float) and 0.0 <= result[k] <= 1.0 for k in FLOAT_KEYS)
    assert len(result["samples"]) == 2 and all(isinstance(s["response"], str) for s in result["samples"])
