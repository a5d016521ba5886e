"""Synthetic scenes: exact consistency of every modality against an independent float64
ray-casting reference written here (interval form: the parameter range inside each solid)."""

import collections
import re

import numpy as np
import pytest

from mmjax.data import scenes
from mmjax.data.scenes import (
    COLOR_NAMES,
    MAX_OBJECTS,
    METADATA_FIELDS,
    SEMSEG_CLASSES,
    SHAPE_NAMES,
    SIZE_NAMES,
    SPLITS,
    generate,
    sample_scene,
)
from mmjax.data.scenes import constants as C
from mmjax.data.scenes import generator as generate_module
from mmjax.data.scenes.sampling import Camera, Scene, SceneObject

INDICES = tuple(range(14))
GROW = 1e-6  # solids grown / shrunk by this much to mark numerically ambiguous pixels


# ----------------------------------------------------------------------------------------
# Independent reference: camera, rays, ray-solid parameter intervals.


def ref_camera(camera):
    """(right, up, forward) of a look-at camera with world up +z."""
    f = np.asarray(camera.target, float) - np.asarray(camera.eye, float)
    f /= np.sqrt(np.sum(f * f))
    r = np.array([f[1], -f[0], 0.0])  # forward x (0, 0, 1)
    r /= np.sqrt(np.sum(r * r))
    u = np.array([r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2], r[0] * f[1] - r[1] * f[0]])
    return r, u, f


def ref_rays(camera, res):
    """Per-pixel ray directions [R, R, 3] with unit forward component, and the camera
    rotation (rows: camera x, y, z axes in world coordinates)."""
    r, u, f = ref_camera(camera)
    t = np.tan(camera.fov / 2)
    jj, ii = np.meshgrid(np.arange(res), np.arange(res))
    sx = ((2 * jj + 1) / res - 1) * t
    sy = (1 - (2 * ii + 1) / res) * t
    dirs = f + sx[..., None] * r + sy[..., None] * u
    return dirs, np.stack([r, u, -f])


def _quadratic_interval(a, b, c):
    """Interval where a t^2 + b t + c <= 0 (a >= 0); (inf, -inf) when empty."""
    lo = np.full(np.shape(c), np.inf)
    hi = np.full(np.shape(c), -np.inf)
    flat = a == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = b * b - 4 * a * c
        s = np.sqrt(disc)
        ok = ~flat & (disc >= 0)
        lo = np.where(ok, (-b - s) / (2 * a), lo)
        hi = np.where(ok, (-b + s) / (2 * a), hi)
    inside = flat & (c <= 0)
    lo = np.where(inside, -np.inf, lo)
    hi = np.where(inside, np.inf, hi)
    return lo, hi


def _slab_interval(o, d, lo_b, hi_b):
    """Interval where lo_b <= o + t d <= hi_b."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo_b - o) / d
        t2 = (hi_b - o) / d
    lo = np.where(d == 0, np.where((o >= lo_b) & (o <= hi_b), -np.inf, np.inf), np.minimum(t1, t2))
    hi = np.where(d == 0, np.where((o >= lo_b) & (o <= hi_b), np.inf, -np.inf), np.maximum(t1, t2))
    return lo, hi


def ref_interval(o, d, obj, grow=0.0):
    """(t_in, t_out) of rays o + t d inside solid ``obj`` grown by ``grow``."""
    o = np.broadcast_to(o, d.shape)
    shape = SHAPE_NAMES[obj.shape]
    e = obj.extent
    if shape == "sphere":
        oc = o - np.array([obj.x, obj.y, e])
        a = np.sum(d * d, -1)
        return _quadratic_interval(a, 2 * np.sum(oc * d, -1), np.sum(oc * oc, -1) - (e + grow) ** 2)
    if shape == "cube":
        cs, sn = np.cos(obj.yaw), np.sin(obj.yaw)
        px, py = o[..., 0] - obj.x, o[..., 1] - obj.y
        local_o = [cs * px + sn * py, -sn * px + cs * py, o[..., 2] - e]
        local_d = [cs * d[..., 0] + sn * d[..., 1], -sn * d[..., 0] + cs * d[..., 1], d[..., 2]]
        lo, hi = -np.inf, np.inf
        for lo_o, lo_d in zip(local_o, local_d, strict=True):
            a, b = _slab_interval(lo_o, lo_d, -e - grow, e + grow)
            lo, hi = np.maximum(lo, a), np.minimum(hi, b)
        return lo, hi
    ox, oy = o[..., 0] - obj.x, o[..., 1] - obj.y
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    lo, hi = _quadratic_interval(
        a, 2 * (ox * d[..., 0] + oy * d[..., 1]), ox * ox + oy * oy - (e + grow) ** 2
    )
    zlo, zhi = _slab_interval(o[..., 2], d[..., 2], -grow, 2 * e + grow)
    return np.maximum(lo, zlo), np.minimum(hi, zhi)


def ref_first_hit(scene, res, grow=0.0):
    """Reference first-hit label (-1 nothing, 0 floor, k object k) and t per pixel."""
    dirs, _ = ref_rays(scene.camera, res)
    eye = np.asarray(scene.camera.eye, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = -eye[2] / dirs[..., 2]
    pf = eye + tf[..., None] * dirs
    floor_ok = (tf > 0) & (np.max(np.abs(pf[..., :2]), -1) <= C.FLOOR_HALF_EXTENT + grow)
    best = np.where(floor_ok, tf, np.inf)
    label = np.where(floor_ok, 0, -1)
    for k, obj in enumerate(scene.objects, start=1):
        lo, hi = ref_interval(eye, dirs, obj, grow)
        t = np.where((lo <= hi) & (lo > 0), lo, np.inf)
        closer = t < best
        best = np.where(closer, t, best)
        label = np.where(closer, k, label)
    return label, best


def ref_blocked(points, direction, objects, grow):
    """Rays from ``points`` toward ``direction`` that pass through any (grown) object."""
    d = np.broadcast_to(direction, points.shape)
    out = np.zeros(points.shape[:-1], bool)
    for obj in objects:
        lo, hi = ref_interval(points, d, obj, grow)
        out |= (lo <= hi) & (hi > 0)
    return out


def unambiguous(scene, res):
    """Pixels whose reference first hit is the same for slightly shrunk and grown solids."""
    lab_small, _ = ref_first_hit(scene, res, -GROW)
    lab_big, _ = ref_first_hit(scene, res, GROW)
    return lab_small == lab_big


def object_class(obj):
    return SEMSEG_CLASSES.index(SHAPE_NAMES[obj.shape])


def visible_ids(sample):
    return sorted(set(np.unique(sample["instance"]).tolist()) - {0})


# ----------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def cases():
    out = []
    for split in ("train", "validation"):
        for i in INDICES:
            out.append((sample_scene(i, split), generate(i, split)))
    return out


def crafted_scene():
    """A large cube hides a small sphere completely; a cylinder stands outside the view."""
    eye = np.array([0.0, -9.0, 5.0])
    camera = Camera(eye=eye, target=np.array([0.0, 0.0, 0.3]), fov=np.deg2rad(40.0))
    objects = (
        SceneObject(1, 1, 1, 0.0, 0.0, 0.6, 0.0),  # large red cube
        SceneObject(0, 0, 2, 0.0, 1.2, 0.35, 0.0),  # small blue sphere, behind the cube
        SceneObject(2, 1, 3, 4.6, -2.0, 0.6, 0.0),  # large green cylinder, out of view
        SceneObject(0, 1, 7, -1.6, -0.3, 0.7, 0.0),  # large yellow sphere, left
    )
    light = np.array([0.3, -0.4, 0.866])
    return Scene("train", 0, (0, 0), objects, camera, light / np.linalg.norm(light))


# ----------------------------------------------------------------------------------------
# API, determinism, splits, errors


def test_contract_dtypes_and_constants():
    s = generate(3, "test", 64)
    assert s["rgb"].dtype == np.float32 and s["rgb"].shape == (64, 64, 3)
    assert s["depth"].dtype == np.float32 and s["normals"].dtype == np.float32
    for key in ("semseg", "instance", "boxes", "box_class", "box_color", "box_instance"):
        assert s[key].dtype == np.int32, key
    assert s["boxes"].shape == (MAX_OBJECTS, 4) and MAX_OBJECTS == 6
    assert s["metadata"].shape == (len(METADATA_FIELDS),) and s["metadata"].dtype == np.float32
    assert s["rgb"].min() >= 0.0 and s["rgb"].max() <= 1.0
    assert SEMSEG_CLASSES == ("background", "floor", "sphere", "cube", "cylinder")
    assert SHAPE_NAMES == ("sphere", "cube", "cylinder")
    assert scenes.COLOR_RGB.shape == (len(COLOR_NAMES), 3)
    assert isinstance(s["caption"], str)


def test_determinism_bit_identical():
    for res in (64, 128):
        a, b = generate(7, "validation", res), generate(7, "validation", res)
        assert a.keys() == b.keys()
        for k in a:
            if k == "caption":
                assert a[k] == b[k]
            else:
                assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert generate(7, "validation")["rgb"].tobytes() != generate(8, "validation")["rgb"].tobytes()


def test_splits_never_share_a_scene():
    params = {}
    for split in SPLITS:
        for i in range(200):
            params[(split, i)] = sample_scene(i, split).params()
    keys = list(params)
    blobs = collections.Counter(params[k].tobytes() for k in keys)
    assert max(blobs.values()) == 1
    # Layout alone (object shapes, colours and positions) also differs pairwise.
    layouts = {np.round(params[k][10:], 6).tobytes() for k in keys}
    assert len(layouts) == len(keys)
    # Same index in different splits: different scenes.
    assert generate(5, "train")["rgb"].tobytes() != generate(5, "test")["rgb"].tobytes()


@pytest.mark.parametrize("res", [0, -8, 60, 63, 12, 64.0, True, "64"])
def test_bad_resolution(res):
    with pytest.raises(ValueError, match="resolution") as err:
        generate(0, "train", res)
    assert repr(res) in str(err.value) or str(res) in str(err.value)


def test_bad_split_and_index():
    with pytest.raises(ValueError, match="valid") as err:
        generate(0, "val")
    assert "'val'" in str(err.value) and all(s in str(err.value) for s in SPLITS)
    with pytest.raises(ValueError, match="index"):
        generate(-1)
    with pytest.raises(ValueError, match="index"):
        generate(1.5)


# ----------------------------------------------------------------------------------------
# Labels and boxes


def test_boxes_semseg_instance_consistency(cases):
    for scene, s in cases:
        inst, sem = s["instance"], s["semseg"]
        ids = visible_ids(s)
        assert all(1 <= k <= len(scene.objects) for k in ids)
        n = len(ids)
        assert list(s["box_instance"][:n]) == ids
        assert np.all(s["box_instance"][n:] == 0)
        assert np.all(s["boxes"][n:] == -1)
        assert np.all(s["box_class"][n:] == 0) and np.all(s["box_color"][n:] == -1)
        for row, k in enumerate(ids):
            ys, xs = np.nonzero(inst == k)
            assert tuple(s["boxes"][row]) == (xs.min(), ys.min(), xs.max(), ys.max())
            obj = scene.objects[k - 1]
            assert s["box_class"][row] == object_class(obj)
            assert s["box_color"][row] == obj.color
            assert np.all(sem[inst == k] == object_class(obj))
        assert np.all(np.isin(sem[inst == 0], (0, 1)))
        assert np.all(inst[sem >= 2] > 0)


def test_labels_depth_match_reference_raycaster(cases):
    shapes_seen = set()
    for scene, s in cases:
        label, t = ref_first_hit(scene, 64)
        clear = unambiguous(scene, 64)
        assert clear.mean() > 0.97
        inst = np.where(label >= 1, label, 0)
        sem = np.where(label >= 1, 0, label + 1)
        for k, obj in enumerate(scene.objects, start=1):
            sem = np.where(label == k, object_class(obj), sem)
        np.testing.assert_array_equal(s["instance"][clear], inst[clear])
        np.testing.assert_array_equal(s["semseg"][clear], sem[clear])
        hit = clear & (label >= 0)
        np.testing.assert_allclose(s["depth"][hit], t[hit], rtol=2e-6, atol=0)
        assert np.all(s["depth"][s["semseg"] == 0] == 0)
        assert np.all(s["depth"][s["semseg"] > 0] > 0)
        shapes_seen |= set(np.unique(s["semseg"]).tolist())
    assert shapes_seen == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------------------
# Geometry: depth and normals


def test_points_lie_on_surfaces_and_normals_match(cases):
    tol = 1e-4
    for scene, s in cases:
        dirs, to_cam = ref_rays(scene.camera, 64)
        p = scene.camera.eye + s["depth"][..., None].astype(np.float64) * dirs
        n = s["normals"].astype(np.float64)
        sem, inst = s["semseg"], s["instance"]
        hit = sem > 0
        np.testing.assert_allclose(np.linalg.norm(n[hit], axis=-1), 1.0, atol=1e-5)
        assert np.all(n[~hit] == 0)
        # Normals face the camera: dot with the camera-space ray (sx, sy, -1) is negative.
        ray_cam = dirs @ to_cam.T
        assert np.all(np.sum(n[hit] * ray_cam[hit], -1) < 0)

        floor = sem == 1
        np.testing.assert_allclose(p[floor][:, 2], 0.0, atol=tol)
        assert np.all(np.abs(p[floor][:, :2]) <= C.FLOOR_HALF_EXTENT + tol)
        np.testing.assert_allclose(
            n[floor], np.broadcast_to(to_cam[:, 2], n[floor].shape), atol=1e-6
        )

        for k, obj in enumerate(scene.objects, start=1):
            m = inst == k
            if not m.any():
                continue
            q = p[m] - np.array([obj.x, obj.y, obj.extent])  # relative to the solid's centre
            shape = SHAPE_NAMES[obj.shape]
            e = obj.extent
            if shape == "sphere":
                np.testing.assert_allclose(np.linalg.norm(q, axis=-1), e, atol=tol)
                n_world = q / e
            elif shape == "cube":
                cs, sn = np.cos(obj.yaw), np.sin(obj.yaw)
                loc = np.stack(
                    [cs * q[:, 0] + sn * q[:, 1], -sn * q[:, 0] + cs * q[:, 1], q[:, 2]], 1
                )
                a = np.abs(loc)
                np.testing.assert_allclose(a.max(1), e, atol=tol)
                axis = a.argmax(1)
                n_loc = np.zeros_like(loc)
                n_loc[np.arange(len(loc)), axis] = np.sign(loc[np.arange(len(loc)), axis])
                n_world = np.stack(
                    [
                        cs * n_loc[:, 0] - sn * n_loc[:, 1],
                        sn * n_loc[:, 0] + cs * n_loc[:, 1],
                        n_loc[:, 2],
                    ],
                    1,
                )
                edge = np.sort(a, 1)[:, 1] > e - 1e-3  # two faces within reach: skip normals
                n_world[edge] = np.nan
            else:
                rho = np.hypot(q[:, 0], q[:, 1])
                z = q[:, 2] + e  # height above the floor
                side = np.abs(rho - e) < tol
                top = np.abs(z - 2 * e) < tol
                assert np.all(side | top)
                assert np.all((z > -tol) & (z < 2 * e + tol) & (rho < e + tol))
                n_world = np.where(
                    top[:, None], [0.0, 0.0, 1.0], np.stack([q[:, 0] / e, q[:, 1] / e, 0 * rho], 1)
                )
                n_world[side & top] = np.nan
            good = ~np.isnan(n_world[:, 0])
            assert good.mean() > 0.8
            np.testing.assert_allclose(n[m][good], (n_world @ to_cam.T)[good], atol=2e-4)


# ----------------------------------------------------------------------------------------
# Shadows


def test_floor_darker_exactly_when_shadow_ray_hits_object(cases):
    n_shadow = n_lit = 0
    for scene, s in cases:
        label, t = ref_first_hit(scene, 64)
        dirs, _ = ref_rays(scene.camera, 64)
        floor = (s["semseg"] == 1) & (label == 0) & unambiguous(scene, 64)
        p = scene.camera.eye + t[floor][:, None] * dirs[floor]
        strict = ref_blocked(p, scene.light_dir, scene.objects, -GROW)
        loose = ref_blocked(p, scene.light_dir, scene.objects, GROW)
        clear = strict == loose
        assert clear.mean() > 0.99
        # Unshadowed Lambertian value: albedo * (ambient + diffuse * n.l) with n = +z.
        k_lit = C.AMBIENT + C.DIFFUSE * scene.light_dir[2]
        k_dark = C.AMBIENT
        ratio = s["rgb"][floor].astype(np.float64) / C.FLOOR_RGB  # = checker * k
        checker = np.array([1 - C.FLOOR_CHECKER, 1 + C.FLOOR_CHECKER])
        lit_vals = checker * k_lit
        # Every floor pixel is one of the 4 exact values (grey: equal over channels).
        allowed = np.concatenate([lit_vals, checker * k_dark])
        dist = np.abs(ratio[..., None] - allowed).max(1)
        assert np.all(dist.min(-1) < 1e-5)
        darker = ratio.mean(1) < lit_vals.min() - 1e-4
        np.testing.assert_array_equal(darker[clear], strict[clear])
        n_shadow += int(strict.sum())
        n_lit += int((~loose).sum())
    assert n_shadow > 100 and n_lit > 1000


# ----------------------------------------------------------------------------------------
# Captions

_OBJ = r"(small|large) (" + "|".join(COLOR_NAMES) + r") (" + "|".join(SHAPE_NAMES) + r")"
_REL = re.compile(
    r"The " + _OBJ + r" (?:is |sits |is located )?(?:to the )?(left of|right of|in front of|behind)"
    r" the " + _OBJ + r"\."
)


def obj_key(obj):
    return (SIZE_NAMES[obj.size], COLOR_NAMES[obj.color], SHAPE_NAMES[obj.shape])


def check_caption(scene, s):
    caption = s["caption"]
    visible = {obj_key(scene.objects[k - 1]) for k in visible_ids(s)}
    first, _, rest = caption.partition(". ")
    intro = collections.Counter(re.findall(_OBJ, first))
    assert intro == collections.Counter(visible), caption
    assert set(re.findall(_OBJ, caption)) <= visible, caption
    by_key = {obj_key(o): o for o in scene.objects}
    _, to_cam = ref_rays(scene.camera, 8)
    rels = _REL.findall(rest) if rest else []
    assert len(rels) == (rest.count(".") if rest else 0), caption
    stated = []
    for m in rels:
        a, rel, b = by_key[m[0:3]], m[3], by_key[m[4:7]]
        ca, cb = (to_cam @ (o.centre - scene.camera.eye) for o in (a, b))
        xa, xb = ca[0] / -ca[2], cb[0] / -cb[2]
        if rel == "left of":
            assert xa < xb, caption
        elif rel == "right of":
            assert xa > xb, caption
        elif rel == "in front of":
            assert -ca[2] < -cb[2], caption
        else:
            assert -ca[2] > -cb[2], caption
        stated.append(rel)
    return stated


def test_caption_names_visible_objects_and_true_relations(cases):
    rels = collections.Counter()
    templates = set()
    for scene, s in cases:
        rels.update(check_caption(scene, s))
        templates.add(s["caption"].split(" ")[0])
    assert set(rels) == {"left of", "right of", "in front of", "behind"}
    assert len(templates) >= 3  # phrasing varies


def test_hidden_objects_not_mentioned(monkeypatch):
    scene = crafted_scene()
    monkeypatch.setattr(generate_module, "sample_scene", lambda index, split: scene)
    s = generate_module.generate(0, "train", 64)
    assert visible_ids(s) == [1, 4]  # sphere 2 fully hidden, cylinder 3 outside the image
    check_caption(scene, s)
    assert "blue" not in s["caption"] and "cylinder" not in s["caption"]
    fields = dict(zip(METADATA_FIELDS, s["metadata"], strict=True))
    assert fields["object_count"] == 2
    assert fields["occluded_count"] == 1  # the hidden sphere; the cylinder is not occluded
    assert list(s["box_instance"]) == [1, 4, 0, 0, 0, 0]


# ----------------------------------------------------------------------------------------
# Resolutions, metadata, contact sheet


def test_resolutions_agree_in_layout():
    for i in range(4):
        lo = generate(i, "train", 64)
        for res in (128, 256):
            hi = generate(i, "train", res)
            f = res // 64
            sub = hi["semseg"][f // 2 :: f, f // 2 :: f]
            assert sub.shape == (64, 64)
            assert np.mean(sub == lo["semseg"]) > 0.95
            assert np.mean(hi["instance"][f // 2 :: f, f // 2 :: f] == lo["instance"]) > 0.95
            # Objects with a few pixels at 64 px are visible at higher resolution too.
            big = [k for k in visible_ids(lo) if np.sum(lo["instance"] == k) >= 4]
            assert set(big) <= set(visible_ids(hi))


def test_metadata_recomputed(cases):
    occluded_total = 0
    for scene, s in cases:
        f = dict(zip(METADATA_FIELDS, s["metadata"].astype(np.float64), strict=True))
        rgb = s["rgb"].astype(np.float64)
        assert f["object_count"] == len(visible_ids(s))
        np.testing.assert_allclose(f["mean_brightness"], rgb.mean(), rtol=1e-6)
        rg = rgb[..., 0] - rgb[..., 1]
        yb = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
        colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        np.testing.assert_allclose(f["colourfulness"], colourful, rtol=1e-5)
        np.testing.assert_allclose(f["floor_fraction"], np.mean(s["semseg"] == 1), rtol=1e-6)
        d = s["depth"][s["depth"] > 0].astype(np.float64)
        np.testing.assert_allclose(f["mean_depth"], d.mean(), rtol=1e-5)
        # Occluded: some pixel's ray meets the object, but the first hit there is another.
        dirs, _ = ref_rays(scene.camera, 64)
        counts = []
        for grow in (-GROW, GROW):
            c = 0
            for k, obj in enumerate(scene.objects, start=1):
                lo, hi = ref_interval(scene.camera.eye, dirs, obj, grow)
                own = (lo <= hi) & (lo > 0)
                c += bool(np.any(own & (s["instance"] != k)))
            counts.append(c)
        assert counts[0] <= f["occluded_count"] <= counts[1]
        occluded_total += f["occluded_count"]
    assert occluded_total > 0


def test_contact_sheet(tmp_path):
    from PIL import Image

    path = scenes.save_contact_sheet(tmp_path / "sheet.png", indices=[2, 3], resolution=64)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] == 6 * (192 + 4) + 4
    # The first panel of the first row is the rgb image, nearest-upscaled 3x.
    s = generate(2, "train", 64)
    want = np.repeat(np.repeat((s["rgb"] * 255 + 0.5).astype(np.uint8), 3, 0), 3, 1)
    np.testing.assert_array_equal(img[16 : 16 + 192, 4 : 4 + 192], want)
    # Semseg panel uses its palette exactly.
    x0 = 4 + 3 * (192 + 4)
    panel = img[16 : 16 + 192 : 3, x0 : x0 + 192 : 3]
    from mmjax.data.scenes.contact_sheet import SEMSEG_PALETTE

    np.testing.assert_array_equal(panel, SEMSEG_PALETTE[s["semseg"]])
