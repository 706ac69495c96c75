"""Pixel-exact tests of the HU windowing and zoom-in embedding transforms (array and dict versions)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from datamodules.boxes import box_problem
from datamodules.transforms import HUWindowd, ZoomEmbedd, to_pil
from datamodules.windowing import WINDOWS, HUWindow
from datamodules.zoom import ZoomEmbed

H = W = 64
YELLOW = torch.tensor([1.0, 1.0, 0.0])


def image(h: int = H, w: int = W) -> torch.Tensor:
    """(3, h, w) gradient, different per channel, bright square at rows/cols 12:20."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([x / w, y / h, (x + y) / (h + w)]).float() * 0.8
    img[:, 12:20, 12:20] = 0.95
    return img


def magnify(img: torch.Tensor, crop: list[int], h: int, w: int) -> torch.Tensor:
    x0, y0, x1, y1 = crop
    return F.interpolate(
        img[None, :, y0:y1, x0:x1],
        size=(h, w),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[0]


def paint_mask(box: list[int], h: int, w: int) -> torch.Tensor:
    """Boolean (h, w) mask of the 1-px border pixels inside `box`."""
    x0, y0, x1, y1 = box
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    m[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
    return m


# --- HUWindowd ------------------------------------------------------------------------


def test_window_edges_map_to_0_and_1_and_clip():
    center, width = WINDOWS["lung"]
    lo, hi = center - width / 2, center + width / 2
    hu = np.array([[lo, hi, center], [-3000.0, 3000.0, lo + width / 4]], np.float32)
    out = HUWindowd("img")({"img": hu})["img"]
    assert out.dtype == torch.float32 and out.shape == (3, 2, 3)
    expected = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.25]])
    for c in range(3):
        assert torch.equal(out[c], expected)


@pytest.mark.parametrize("name", list(WINDOWS))
def test_each_window_edges(name):
    center, width = WINDOWS[name]
    hu = torch.tensor([[center - width / 2, center + width / 2, center]])
    out = HUWindowd("img", windows=[name])({"img": hu})["img"]
    assert torch.equal(out[0], torch.tensor([[0.0, 1.0, 0.5]]))


def test_three_windows_give_one_channel_each():
    # 40 HU: mid-mediastinal; lung and bone windows put it at different greys.
    hu = torch.full((4, 5), 40.0)
    hu[0, 0] = -1000.0  # air: dark in every window
    hu[0, 1] = -600.0  # lung centre: 0.5 in lung, 0 in mediastinal, 0 in bone
    out = HUWindowd("img", windows=("lung", "mediastinal", "bone"))({"img": hu})["img"]
    assert out.shape == (3, 4, 5)
    assert out[:, 1, 1].tolist() == pytest.approx([1390 / 1500, 0.5, 540 / 1800])
    assert out[:, 0, 0].tolist() == pytest.approx([350 / 1500, 0.0, 0.0])
    assert out[:, 0, 1].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_input_untouched_and_other_keys_kept():
    hu = torch.zeros(8, 8)
    data = {"img": hu, "roi": [[0, 0, 2, 2]]}
    out = HUWindowd("img")(data)
    assert out["roi"] is data["roi"] and data["img"] is hu
    assert torch.equal(hu, torch.zeros(8, 8))


def test_unknown_window_names_it_and_lists_valid():
    with pytest.raises(ValueError, match="softtissue") as e:
        HUWindowd("img", windows=("softtissue",))
    assert all(name in str(e.value) for name in WINDOWS)


def test_two_windows_rejected():
    with pytest.raises(ValueError, match="1 window"):
        HUWindowd("img", windows=("lung", "bone"))


def test_non_2d_slice_rejected():
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        HUWindowd("img")({"img": np.zeros((1, 4, 4), np.float32)})


def test_array_transform_on_a_bare_slice_equals_the_dict_one():
    hu = np.random.default_rng(0).uniform(-1500, 2000, (16, 24)).astype(np.float32)
    for windows in (("lung",), ("lung", "mediastinal", "bone")):
        out = HUWindow(windows)(hu)
        assert type(out) is torch.Tensor and out.shape == (3, 16, 24)
        assert torch.equal(out, HUWindowd("img", windows=windows)({"img": hu})["img"])
    with pytest.raises(ValueError, match=r"2D \(H, W\)"):
        HUWindow()(np.zeros(4, np.float32))


# --- HUWindow on MONAI's ScaleIntensityRange vs the hand-written windowing it replaced -----------------------


def reference_window(hu: np.ndarray | torch.Tensor, windows: list[str]) -> torch.Tensor:
    """The windowing before it was built on MONAI (datamodules/transforms.py at 4dc26ed), kept as the reference."""
    from monai.utils import convert_to_tensor

    def _window(hu: torch.Tensor, center: float, width: float) -> torch.Tensor:
        return ((hu - (center - width / 2)) / width).clamp_(0.0, 1.0)

    hu = convert_to_tensor(hu, dtype=torch.float32, track_meta=False)
    if len(windows) == 1:
        return _window(hu, *WINDOWS[windows[0]]).repeat(3, 1, 1)
    return torch.stack([_window(hu, *WINDOWS[w]) for w in windows])


WINDOW_SETS = [["lung"], ["mediastinal"], ["bone"], ["lung", "mediastinal", "bone"], ["bone", "lung", "mediastinal"]]


@pytest.mark.parametrize("windows", WINDOW_SETS)
def test_monai_windowing_is_bit_identical_on_random_hu(windows):
    rng = np.random.default_rng(1)
    # Uniform over the CT range plus every window's edges and centre, and values one float32 ulp either side.
    hu = rng.uniform(-3024, 3071, (256, 256)).astype(np.float32)
    specials = np.array([c + s * w / 2 for c, w in WINDOWS.values() for s in (-1, 0, 1)], np.float32)
    near = np.concatenate([specials, np.nextafter(specials, -np.inf), np.nextafter(specials, np.inf)])
    hu.flat[: near.size] = near
    new, old = HUWindow(windows)(hu), reference_window(hu, windows)
    assert float((new - old).abs().max()) == 0.0
    assert torch.equal(new, old)
    assert np.array_equal(np.asarray(to_pil(new)), np.asarray(to_pil(old)))


# --- ZoomEmbedd: inset ----------------------------------------------------------------


def test_inset_pixels_exact():
    img = image()
    box = [10, 12, 20, 22]
    out_d = ZoomEmbedd("img")({"img": img, "roi": [box]})
    out, meta = out_d["img"], out_d["zoom_meta"]
    assert out.shape == img.shape
    # 10 px box, margin 0.5 → 20 px square centred on it; inset side 0.5 × 64 = 32,
    # 1 px (its frame) from the bottom-right corner, the one farthest from the box.
    assert meta == {
        "box": box,
        "crop": [5, 7, 25, 27],
        "inset": [31, 31, 63, 63],
        "layout": "inset",
    }
    assert torch.equal(out[:, 31:63, 31:63], magnify(img, [5, 7, 25, 27], 32, 32))

    outline = paint_mask(box, H, W)
    frame = paint_mask([30, 30, 64, 64], H, W)
    assert torch.equal(out[:, outline], YELLOW[:, None].expand(3, int(outline.sum())))
    assert torch.equal(out[:, frame], YELLOW[:, None].expand(3, int(frame.sum())))
    # Everything else, including the pixels just inside the box, is the input.
    untouched = ~outline & ~frame
    untouched[31:63, 31:63] = False
    assert torch.equal(out[:, untouched], img[:, untouched])
    assert torch.equal(out[:, 13:21, 11:19], img[:, 13:21, 11:19])


def test_input_not_modified():
    img = image()
    before = img.clone()
    ZoomEmbedd("img")({"img": img, "roi": [[10, 12, 20, 22]]})
    assert torch.equal(img, before)


@pytest.mark.parametrize(
    ("box", "inset"),
    [
        ([5, 5, 15, 15], [31, 31, 63, 63]),  # top-left box → bottom-right inset
        ([50, 5, 60, 15], [1, 31, 33, 63]),  # top-right → bottom-left
        ([5, 50, 15, 60], [31, 1, 63, 33]),  # bottom-left → top-right
        ([50, 50, 60, 60], [1, 1, 33, 33]),  # bottom-right → top-left
    ],
)
def test_inset_in_farthest_corner(box, inset):
    img = image()
    out = ZoomEmbedd("img")({"img": img, "roi": [box]})
    assert out["zoom_meta"]["inset"] == inset
    x0, y0, x1, y1 = inset
    crop = out["zoom_meta"]["crop"]
    assert torch.equal(out["img"][:, y0:y1, x0:x1], magnify(img, crop, 32, 32))


def test_wider_outline_and_colour():
    img = image()
    box = [20, 20, 40, 30]
    red = (1.0, 0.0, 0.0)
    out = ZoomEmbedd("img", outline_color=red, outline_width=2, inset_fraction=0.25)({"img": img, "roi": [box]})["img"]
    color = torch.tensor(red)[:, None, None]
    assert torch.equal(out[:, 20:22, 20:40], color.expand(3, 2, 20))
    assert torch.equal(out[:, 28:30, 20:40], color.expand(3, 2, 20))
    assert torch.equal(out[:, 20:30, 20:22], color.expand(3, 10, 2))
    assert torch.equal(out[:, 20:30, 38:40], color.expand(3, 10, 2))
    assert torch.equal(out[:, 22:28, 22:38], img[:, 22:28, 22:38])


def test_several_boxes_union_crop_and_each_outlined():
    img = image()
    boxes = [[10, 10, 14, 14], [20, 16, 26, 20]]
    out = ZoomEmbedd("img", margin=0.0)({"img": img, "roi": boxes})
    meta = out["zoom_meta"]
    assert meta["box"] == [10, 10, 26, 20]
    assert meta["crop"] == [10, 7, 26, 23]  # 16 px square, centred vertically
    for box in boxes:
        mask = paint_mask(box, H, W)
        assert torch.equal(out["img"][:, mask], YELLOW[:, None].expand(3, int(mask.sum())))
    # Between the two boxes, inside the union: not outlined.
    assert torch.equal(out["img"][:, 12, 16:20], img[:, 12, 16:20])


def test_single_flat_box_accepted():
    out = ZoomEmbedd("img")({"img": image(), "roi": [10, 12, 20, 22]})
    assert out["zoom_meta"]["box"] == [10, 12, 20, 22]


def test_out_key_keeps_global_view():
    img = image()
    out = ZoomEmbedd("img", out_key="zoomed")({"img": img, "roi": [[10, 12, 20, 22]]})
    assert out["img"] is img and out["zoomed"].shape == img.shape


# --- ZoomEmbedd: side_by_side ---------------------------------------------------------


def test_side_by_side_square():
    img = image()
    box = [10, 12, 20, 22]
    out_d = ZoomEmbedd("img", layout="side_by_side")({"img": img, "roi": [box]})
    out, meta = out_d["img"], out_d["zoom_meta"]
    assert out.shape == (3, H, 2 * W)
    assert meta["inset"] == [W, 0, 2 * W, H]
    assert torch.equal(out[:, :, W:], magnify(img, meta["crop"], H, W))
    outline = paint_mask(box, H, W)
    left = out[:, :, :W]
    assert torch.equal(left[:, outline], YELLOW[:, None].expand(3, int(outline.sum())))
    assert torch.equal(left[:, ~outline], img[:, ~outline])


def test_side_by_side_letterboxes_non_square():
    img = image(48, 64)
    out_d = ZoomEmbedd("img", layout="side_by_side")({"img": img, "roi": [[30, 20, 40, 30]]})
    out, meta = out_d["img"], out_d["zoom_meta"]
    assert out.shape == (3, 48, 128)
    assert meta["inset"] == [72, 0, 120, 48]
    assert torch.equal(out[:, :, 72:120], magnify(img, meta["crop"], 48, 48))
    assert not out[:, :, 64:72].any() and not out[:, :, 120:].any()


# --- ZoomEmbed: the array transform on a bare image -----------------------------------------------------------


def test_array_zoom_on_a_bare_tensor_or_array_equals_the_dict_one():
    img = image()
    box = [10, 12, 20, 22]
    for layout in ("inset", "side_by_side"):
        d = ZoomEmbedd("img", layout=layout)({"img": img, "roi": [box]})
        zoom = ZoomEmbed(layout=layout)
        assert torch.equal(zoom(img, [box]), d["img"])
        assert torch.equal(zoom(img.numpy(), box), d["img"])
        out, meta = zoom.embed(img, [box])
        assert torch.equal(out, d["img"]) and meta == d["zoom_meta"]


def test_array_zoom_refuses_an_unwindowed_slice():
    with pytest.raises(ValueError, match="HUWindow"):
        ZoomEmbed()(torch.zeros(H, W), [[1, 1, 4, 4]])


# --- crop placement and errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "crop"),
    [
        ([0, 0, 6, 6], [0, 0, 12, 12]),  # would start at -3: shifted right/down
        ([58, 60, 64, 64], [52, 52, 64, 64]),  # would end past 64: shifted left/up
        ([30, 30, 32, 32], [27, 27, 35, 35]),  # tiny box: min_crop 8
        ([0, 0, 64, 64], [0, 0, 64, 64]),  # crop larger than image: whole image
    ],
)
def test_crop_near_border_is_shifted_not_shrunk(box, crop):
    out = ZoomEmbedd("img")({"img": image(), "roi": [box]})
    assert out["zoom_meta"]["crop"] == crop


def test_crop_always_square_inside_and_covers_box():
    zoom = ZoomEmbed(margin=0.3, min_crop=8)
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = rng.integers(16, 96, size=2)
        x0, x1 = sorted(rng.choice(w + 1, size=2, replace=False))
        y0, y1 = sorted(rng.choice(h + 1, size=2, replace=False))
        cx0, cy0, cx1, cy1 = zoom.crop_box([x0, y0, x1, y1], int(h), int(w))
        assert 0 <= cx0 <= x0 and x1 <= cx1 <= w
        assert 0 <= cy0 <= y0 and y1 <= cy1 <= h
        if max(x1 - x0, y1 - y0) <= min(h, w):
            assert cx1 - cx0 == cy1 - cy0 >= min(8, h, w)


def test_box_longer_than_short_side_is_clipped():
    zoom = ZoomEmbed()
    assert zoom.crop_box([0, 4, 60, 28], 32, 64) == [0, 0, 60, 32]


@pytest.mark.parametrize(
    "box",
    [
        [0, 0, 65, 10],
        [-1, 0, 5, 5],
        [10, 60, 20, 70],
        [10, 10, 10, 20],
        [10, 20, 15, 12],
    ],
)
def test_bad_box_raises_with_box_and_problem(box):
    """The words are datamodules/boxes.py:box_problem's (the one box check), after the key and "ROI box"."""
    with pytest.raises(ValueError) as e:
        ZoomEmbedd("img")({"img": image(), "roi": [[1, 1, 4, 4], box]})
    assert str(e.value) == f"'img': ROI box {box_problem(box, H, W)}"
    assert str(box) in str(e.value) and ("outside the 64×64 slice" in str(e.value) or "empty" in str(e.value))


@pytest.mark.parametrize("roi", [[], [[1, 2, 3]], [[1.5, 2, 3, 4]]])
def test_malformed_roi_raises(roi):
    with pytest.raises(ValueError, match="ROI"):
        ZoomEmbedd("img")({"img": image(), "roi": roi})


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="layout"):
        ZoomEmbedd("img", layout="overlay")
    with pytest.raises(ValueError, match="inset_fraction"):
        ZoomEmbedd("img", inset_fraction=1.0)
    with pytest.raises(ValueError, match="out_key"):
        ZoomEmbedd(("a", "b"), out_key="c")


def test_image_must_be_windowed_first():
    with pytest.raises(ValueError, match="HUWindowd"):
        ZoomEmbedd("img")({"img": torch.zeros(H, W), "roi": [[1, 1, 4, 4]]})


# --- to_pil and the composed pipeline -------------------------------------------------


def test_to_pil_values():
    img = torch.zeros(3, 2, 4)
    img[0, 0, 0] = 1.0
    img[1, 0, 1] = 0.5
    img[2, 1, 3] = 2.0  # clipped
    pil = to_pil(img)
    assert pil.mode == "RGB" and pil.size == (4, 2)
    arr = np.asarray(pil)
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[0, 1].tolist() == [0, 128, 0]
    assert arr[1, 3].tolist() == [0, 0, 255]
    with pytest.raises(ValueError, match="3, H, W"):
        to_pil(torch.zeros(2, 4))


def test_pipeline_hu_to_pil():
    hu = np.full((H, W), -800.0, np.float32)
    hu[12:20, 12:20] = 50.0  # a nodule
    pipeline = Compose([HUWindowd("img", windows=("lung", "mediastinal", "bone")), ZoomEmbedd("img")])
    out = pipeline({"img": hu, "roi": [[12, 12, 20, 20]]})
    pil = to_pil(out["img"])
    assert pil.size == (W, H)
    assert np.asarray(pil)[12, 12].tolist() == [255, 255, 0]


@pytest.mark.parametrize("windows", [["lung"], ["lung", "mediastinal", "bone"]])
def test_monai_windowing_gives_the_same_model_inputs_on_the_synthetic_data(synthetic_root, tiny_model_dir, windows):
    """Every record of the synthetic set, through the whole sample path (window, zoom, resize, PIL, processor), with
    the MONAI windowing and with the hand-written one it replaced: the same floats, PIL images and pixel_values."""
    from datamodules.ct_vqa import CTVQADataModule
    from datamodules.ctrate import axial_slice
    from datamodules.vqa_dataset import ZoomSpec

    data = {"data_dir": str(synthetic_root), "processor_path": str(tiny_model_dir), "num_workers": 0}
    dm = CTVQADataModule(**data, zoom=ZoomSpec(), windows=windows)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.datasets["train"]

    class ReferenceWindowd:
        def __call__(self, data: dict) -> dict:
            return {**data, "image": reference_window(data["image"], windows)}

    new_transform = ds.renderer.transform
    old_transform = Compose([ReferenceWindowd(), *new_transform.transforms[1:]])
    worst = 0.0
    for record in ds.records:
        hu = ds.renderer.hu_slice(record)
        windowed = HUWindow(windows)(hu)
        worst = max(worst, float((windowed - reference_window(hu, windows)).abs().max()))
        assert torch.equal(windowed, reference_window(hu, windows))
        ds.renderer.transform = new_transform
        new = ds.image(record)
        ds.renderer.transform = old_transform
        old = ds.image(record)
        assert torch.equal(new, old)
        assert np.array_equal(np.asarray(to_pil(new)), np.asarray(to_pil(old)))
        assert torch.equal(ds.encode(record, new)["pixel_values"], ds.encode(record, old)["pixel_values"])
    # Every axial slice of every volume the split's records use, not only the slices they ask about.
    for name in {record["volume_name"] for record in ds.records}:
        volume = ds.renderer.volumes.get(name, ds.metadata.get(name))
        for k in range(volume.shape[-1]):
            hu = axial_slice(volume, k)
            worst = max(worst, float((HUWindow(windows)(hu) - reference_window(hu, windows)).abs().max()))
    assert worst == 0.0 and len(ds.records) > 10
