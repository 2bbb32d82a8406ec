import torch

from keycld_gym.model.encoder import KeypointEncoder, image_grid, spatial_softmax
from keycld_gym.model.renderer import KeypointRenderer, gaussian_maps
from keycld_gym.sim.camera import pixels_to_image


def test_image_grid_matches_the_camera_convention():
    grid = image_grid(64, 128)
    expected = pixels_to_image(torch.tensor([[0.0, 0.0], [127.0, 63.0]]).numpy(), 64, 128)
    torch.testing.assert_close(grid[0, 0], torch.tensor(expected[0], dtype=torch.float32))
    torch.testing.assert_close(grid[63, 127], torch.tensor(expected[1], dtype=torch.float32))


def test_spatial_softmax_finds_a_sharp_peak_at_any_resolution():
    heat = torch.full((1, 2, 32, 64), -1e4)
    heat[0, 0, 5, 10] = 0.0
    heat[0, 1, 30, 60] = 0.0
    kp = spatial_softmax(heat)
    # A peak in heatmap cell (5, 10) of a half-resolution map covers frame pixels
    # rows 10-11, columns 20-21: its centre is frame pixel (20.5, 10.5).
    expected = pixels_to_image(torch.tensor([[20.5, 10.5], [120.5, 60.5]]).numpy(), 64, 128)
    torch.testing.assert_close(kp[0], torch.tensor(expected, dtype=torch.float32))


def test_gaussian_maps_peak_at_the_keypoint():
    kp = torch.tensor([[[0.5, -0.25]]])
    maps = gaussian_maps(kp, 64, 128, sigma=0.1)
    row, col = divmod(int(maps[0, 0].argmax()), 128)
    torch.testing.assert_close(image_grid(64, 128)[row, col], kp[0, 0], atol=1 / 32, rtol=0)


def test_encoder_and_renderer_shapes_ranges_and_gradients():
    enc, ren = KeypointEncoder(2), KeypointRenderer(2, 64, 128)
    frames = torch.randint(0, 256, (3, 64, 128, 3), dtype=torch.uint8)
    kp = enc(frames)
    assert kp.shape == (3, 2, 2)
    assert (kp[..., 0].abs() <= 2).all() and (kp[..., 1].abs() <= 1).all()
    out = ren(kp)
    assert out.shape == (3, 64, 128, 3) and (out >= 0).all() and (out <= 1).all()
    ((out - frames.float() / 255) ** 2).mean().backward()
    assert all(p.grad is not None for p in list(enc.parameters()) + list(ren.parameters()))


def test_full_resolution_encoder_gives_frame_sized_heatmaps_with_gradients():
    from keycld_gym.model.encoder import EncoderConfig

    enc = KeypointEncoder(2, EncoderConfig(channels=8, depth=1, full_resolution=True))
    frames = torch.randint(0, 256, (3, 64, 128, 3), dtype=torch.uint8)
    assert enc.heatmaps(frames).shape == (3, 2, 64, 128)
    enc(frames).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_a_mask_ramp_moves_the_keypoint_smoothly_with_an_edge():
    """A hard mask jumps a whole cell as an edge pixel crosses the threshold; a ramp follows it."""
    from keycld_gym.model.encoder import foreground_mask, mask_heatmaps

    background = torch.zeros(4, 8, 3)
    heat = torch.zeros(1, 1, 4, 8)
    xs = {}
    for ramp in (0.0, 0.3):
        xs[ramp] = []
        for edge in torch.linspace(0.0, 1.0, 41):  # an object's anti-aliased right edge, sliding in
            frame = torch.zeros(1, 4, 8, 3)
            frame[0, :, 2:4] = 1.0
            frame[0, :, 4] = edge
            mask = foreground_mask(frame, background, 0.3, ramp)
            xs[ramp].append(spatial_softmax(mask_heatmaps(heat, mask))[0, 0, 0].item())
    steps = {ramp: torch.tensor(x).diff() for ramp, x in xs.items()}
    assert (steps[0.0] >= 0).all() and (steps[0.3] >= 0).all()
    assert steps[0.0].max() > 0.9 * (xs[0.0][-1] - xs[0.0][0])  # one jump
    assert steps[0.3].max() < 0.5 * (xs[0.3][-1] - xs[0.3][0])  # spread over the ramp


def test_line_maps_draw_the_segment_between_linked_keypoints():
    from keycld_gym.model.renderer import line_maps

    q = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]])
    m = line_maps(q, [(0, 1)], 32, 64, 0.05)
    assert m.shape == (1, 1, 32, 64)
    grid = image_grid(32, 64)
    on = (grid[..., 1].abs() < 0.04) & (grid[..., 0].abs() < 0.45)  # rows nearest the line
    far = (grid[..., 1].abs() > 0.3) | (grid[..., 0].abs() > 0.8)
    assert on.sum() > 0 and m[0, 0][on].min() > 0.75 and m[0, 0][far].max() < 1e-3


def test_foreground_mask_keeps_keypoints_on_the_moving_parts():
    from keycld_gym.model.encoder import foreground_mask, mask_heatmaps, spatial_softmax

    background = torch.zeros(8, 16, 3)
    frames = torch.zeros(2, 8, 16, 3, dtype=torch.uint8)
    frames[0, 2:4, 12:14] = 200  # one bright object; frame 1 has none
    mask = foreground_mask(frames, background, 0.3)
    assert mask[0].sum() == 4 and mask[1].sum() == 0
    heat = torch.zeros(2, 1, 4, 8)
    heat[:, 0, 0, 0] = 5.0  # a peak on the background
    q = spatial_softmax(mask_heatmaps(heat, mask))
    expected = image_grid(8, 16)[2:4, 12:14].reshape(-1, 2).mean(0)
    torch.testing.assert_close(q[0, 0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(q[1], spatial_softmax(heat)[1])  # no foreground: unmasked


def test_links_to_a_learned_pivot_are_drawn_and_follow_permutations():
    """The pendulum's rod runs from the renderer's own pivot to the bob; the acrobot's upper arm likewise."""
    from keycld_gym.model.keycld import KeyCLDModel

    model = KeyCLDModel("acrobot")
    ren = model.renderer
    assert ren.pivoted.tolist() == [0] and ren.links.tolist() == [[0, 1]]
    with torch.no_grad():
        ren.pivots[0] = torch.tensor([0.0, 0.2])
    q = torch.tensor([[[0.0, -0.4], [0.3, -0.6]]])
    pivots, pivoted = ren.pivot_links()
    assert pivoted == [0]
    from keycld_gym.model.renderer import line_maps

    lines = line_maps(q, ren.links.tolist(), 32, 32, 0.05, pivots, pivoted)  # elbow-tip, then pivot-elbow
    grid = image_grid(32, 32)
    on_arm = ((grid - torch.tensor([0.0, -0.1])).norm(dim=-1) < 0.04)  # halfway from the pivot to the elbow
    assert lines.shape == (1, 2, 32, 32) and lines[0, 1][on_arm].min() > 0.7 and lines[0, 0][on_arm].max() < 1e-3
    frame = ren(q)
    frame.mean().backward()
    assert ren.pivots.grad.abs().sum() > 0  # the pivot learns from the reconstruction
    model.permute_keypoints([1, 0])
    assert ren.pivoted.tolist() == [1] and ren.links.tolist() == [[1, 0]]


def test_held_pivots_stay_at_the_image_centre_through_training():
    """`learn_pivots=False`: the pivoted links start where the camera looks, and training leaves them there."""
    from keycld_gym.model.keycld import KeyCLDModel, ModelConfig
    from keycld_gym.model.renderer import RendererConfig

    model = KeyCLDModel("acrobot", ModelConfig(renderer=RendererConfig(learn_pivots=False)))
    optimizer = torch.optim.Adam(model.keypoint_parameters(), lr=0.1)
    q = torch.tensor([[[0.0, -0.4], [0.3, -0.6]]], requires_grad=True)
    model.renderer(q).mean().backward()
    optimizer.step()
    assert q.grad.abs().sum() > 0
    torch.testing.assert_close(model.renderer.pivots.detach(), torch.zeros(1, 2))


def test_a_local_renderer_draws_only_near_its_keypoints_and_links():
    """`local=True`: a pixel 18 px from every blob and line barely depends on the keypoints; the default decoder's does."""
    from keycld_gym.model.renderer import RendererConfig

    grads = {}
    for local in (True, False):
        torch.manual_seed(0)
        ren = KeypointRenderer(2, 64, 64, RendererConfig(local=local), links=[(0, 1)])
        q = torch.tensor([[[0.6, -0.6], [0.8, -0.8]]], requires_grad=True)  # keypoint 0 at pixel (50.7, 50.7)
        ren(q)[0, 32, 50].sum().backward()
        grads[local] = q.grad.abs().max().item()
    assert grads[True] < 1e-5 < grads[False]


def test_an_encoder_with_coordinates_sees_where_a_pixel_is():
    """On a uniform frame the interior heatmap is flat without coordinates and varies with position with them."""
    from keycld_gym.model.encoder import EncoderConfig

    frame = torch.full((1, 32, 32, 3), 0.5)
    for coordinates in (False, True):
        torch.manual_seed(0)
        enc = KeypointEncoder(1, EncoderConfig(coordinates=coordinates))
        interior = enc.heatmaps(frame)[0, 0, 4:-4, 4:-4]  # away from the zero padding
        assert (interior.std() > 1e-4) == coordinates


def test_a_local_compact_renderer_draws_nothing_beyond_its_parts_reach():
    """`local` and `compact`: a pixel 12 px from every blob and line (blob reach 2 sigma = 6.4 px) ignores the keypoints."""
    from keycld_gym.model.renderer import RendererConfig

    torch.manual_seed(0)
    ren = KeypointRenderer(2, 64, 64, RendererConfig(local=True, compact=True), links=[(0, 1)])
    q = torch.tensor([[[0.6, -0.6], [0.8, -0.8]]], requires_grad=True)  # keypoint 0 at pixel (50.7, 50.7)
    frame = ren(q)[0]
    frame[38, 50].sum().backward(retain_graph=True)
    assert q.grad.abs().max().item() == 0.0
    q.grad = None
    frame[50, 50].sum().backward()  # on the blob
    assert q.grad.abs().max().item() > 0


def test_a_full_resolution_renderer_draws_no_wider_than_its_parts():
    """`full_resolution` with `local` and `compact`: a pixel 4.5 px off a line (reach 3.2 px) ignores the keypoints;
    at half resolution the upsampling reaches it."""
    from keycld_gym.model.renderer import RendererConfig

    grads = {}
    for full in (True, False):
        torch.manual_seed(0)
        ren = KeypointRenderer(2, 64, 128, RendererConfig(local=True, compact=True, full_resolution=full),
                               links=[(0, 1)])
        q = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]], requires_grad=True)  # a line along y = 0, blobs far off
        frame = ren(q)
        assert frame.shape == (1, 64, 128, 3)
        frame[0, 36, 64].sum().backward()  # y = 36.5 / 32 - 1 = 0.14 from the line
        grads[full] = q.grad.abs().max().item()
    assert grads[True] == 0.0 < grads[False]
