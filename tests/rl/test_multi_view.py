"""Several images per prompt (candidate views, datamodules/views.py) through the RL path: rows keep exactly their
images when repeated and sliced, the shared prefill and the grouped forward equal one row per completion (values
and gradients), and vLLM gets one placeholder per image."""

from __future__ import annotations

import pytest
import torch

from datamodules.collate import IMAGE_COUNTS, VQACollator
from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import image_token_id, load_processor
from datamodules.roi_sources import AnatomyROI
from datamodules.views import ViewSpec
from datamodules.vqa_builder import build_vqa
from models.loading import load_model
from rl.grouped_forward import completion_logits
from rl.loss import token_logps_and_entropy
from rl.prompt_batch import image_rows, repeat_prompts, select_rows
from rl.sampling import SamplingConfig, end_token_ids, sample_completions
from rl.vllm_io import vllm_prompts
from tests.rl.test_grouped_forward import _training_model_and_rollout, check_grouped_against_full_rows


@pytest.fixture(scope="module")
def views_batch(synthetic_root, tiny_model_dir, tmp_path_factory):
    """A batch of 3 prompts with 3, 1 and 3 images (K = 3 views; a location question keeps one slice)."""
    out, spec = tmp_path_factory.mktemp("vqa-views"), ViewSpec(k=3)
    build_vqa(synthetic_root, out, seed=0, roi_source=AnatomyROI(), views=spec)
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), synthetic=None, vqa_dir=str(out),
        roi_source=AnatomyROI(), views=spec, image_size=56, keep_images=True, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    ds = dm.datasets["train"]
    many = [i for i, r in enumerate(ds.records) if len(r.get("views") or []) == 3]
    one = next(i for i, r in enumerate(ds.records) if "views" not in r)
    batch = VQACollator(pad_token_id=dm.processor.tokenizer.pad_token_id)([ds[many[0]], ds[one], ds[many[1]]])
    assert batch[IMAGE_COUNTS].tolist() == [3, 1, 3] and batch["image_grid_thw"].shape[0] == 7
    return batch, dm.processor


def test_repeated_and_sliced_rows_keep_exactly_their_images(views_batch):
    batch, _ = views_batch
    g = 2
    repeated = repeat_prompts(batch, g)
    assert repeated[IMAGE_COUNTS].tolist() == [3, 3, 1, 1, 3, 3] and repeated["image_grid_thw"].shape[0] == 14
    per_prompt = torch.split(batch["pixel_values"], image_rows(batch, "pixel_values"))
    for row in range(3 * g):
        one = select_rows(repeated, slice(row, row + 1))
        assert torch.equal(one["pixel_values"], per_prompt[row // g])
        assert one["image_grid_thw"].shape[0] == batch[IMAGE_COUNTS][row // g]


def test_image_inputs_that_do_not_divide_among_the_rows_images_are_refused(views_batch):
    batch, _ = views_batch
    wrong = {**batch, IMAGE_COUNTS: torch.tensor([3, 1, 2])}  # 6 images said, 7 given
    with pytest.raises(ValueError, match="image_grid_thw 7 images"):
        image_rows(wrong, "pixel_values")
    with pytest.raises(ValueError, match="7 entries for 6 images"):
        image_rows(wrong, "image_grid_thw")


def test_shared_prefill_equals_a_full_forward_with_several_images(views_batch, tiny_model_dir):
    batch, processor = views_batch
    model = load_model(tiny_model_dir).eval()
    eos = end_token_ids(model, processor.tokenizer)
    patches = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, args: patches.append(args[0].shape[0]))
    try:
        rollout = sample_completions(
            model, batch, 3, SamplingConfig(max_new_tokens=8, temperature=0.7), eos, processor.tokenizer.pad_token_id,
            generator=torch.Generator().manual_seed(0), with_logps=True,
        )  # fmt: skip
    finally:
        hook.remove()
    assert patches == [batch["pixel_values"].shape[0]]  # every prompt's images once, not once per completion
    logits = completion_logits(model, repeat_prompts(batch, 3), rollout.completion_ids, rollout.completion_mask)
    logps, _ = token_logps_and_entropy(logits, rollout.completion_ids, temperature=0.7)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.sampling_logps[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("rows", [slice(None), slice(2, 7)], ids=["all", "cuts-groups"])
def test_grouped_logps_and_gradients_equal_per_row_forwards_with_three_views(views_batch, tiny_model_dir, rows):
    batch, _ = views_batch
    model, rollout = _training_model_and_rollout(tiny_model_dir, batch, False, max_new_tokens=8, seed=0)
    check_grouped_against_full_rows(model, batch, rollout, rows)


def test_vllm_gets_one_placeholder_per_image(views_batch, tiny_model_dir):
    batch, _ = views_batch
    image_id = image_token_id(load_processor(tiny_model_dir))
    for row, counts in zip(vllm_prompts(batch, image_id), batch[IMAGE_COUNTS].tolist(), strict=True):
        images = row["multi_modal_data"]["image"]
        assert row["prompt_token_ids"].count(image_id) == counts == (len(images) if isinstance(images, list) else 1)


def test_vllm_engine_allows_as_many_images_as_the_data_has_views(tiny_model_dir):
    import lightning as L

    from datamodules.ct_vqa import CTVQADataModule
    from lightning_modules.grpo import GRPOModule
    from rl.vllm_io import images_per_prompt

    module = GRPOModule(model_path=str(tiny_model_dir))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    assert images_per_prompt(module) == 1  # no datamodule: one image
    for views, expected in [(None, 1), (ViewSpec(k=4, slab_mm=10), 4)]:
        trainer.datamodule = CTVQADataModule(processor_path=str(tiny_model_dir), views=views)
        assert images_per_prompt(module) == expected
