"""What training costs: FLOPs by hand, the cost a level records, the paper grid's total."""

import pytest

from lth_keras import costs, grid, models, pruning, weights


def test_forward_flops_by_hand():
    lenet = models.build_model("lenet_300_100", input_shape=(28, 28, 1), num_classes=10, seed=0)
    dense = 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert costs.forward_flops(lenet) == {"dense": dense, "masked": dense}
    masks = pruning.prune(weights.get_kernels(lenet), weights.get_masks(lenet), 0.5)
    alive = sum(int(m.sum()) for m in masks.values())
    assert costs.forward_flops(lenet, masks) == {"dense": dense,
                                                 "masked": 2 * (alive + 100 * 10)}
    # Conv-4 at 8 px: "same" 3x3 convs at 8x8 and (after a pool) 4x4, then dense layers.
    conv4 = models.build_model("conv4", input_shape=(8, 8, 3), num_classes=10, seed=0)
    convs = 64 * (3 * 9 * 64 + 64 * 9 * 64) + 16 * (64 * 9 * 128 + 128 * 9 * 128)
    fcs = 2 * 2 * 128 * 256 + 256 * 256 + 256 * 10
    assert costs.forward_flops(conv4)["dense"] == 2 * (convs + fcs)


def test_level_cost_from_history():
    lenet = models.build_model("lenet_300_100", input_shape=(16, 16, 3), num_classes=10, seed=0)
    history = [{"images": 256, "seconds": 1.5}, {"images": 256, "seconds": 0.5}]
    cost = costs.level_cost(lenet, weights.dense_masks(lenet), history)
    assert cost["images"] == 512 and cost["seconds"] == 2.0
    per_image = cost["forward_flops_per_image"]["dense"]
    assert cost["training_flops"] == {"dense": 3 * per_image * 512, "masked": 3 * per_image * 512}


def test_grid_cost_counts_levels_images_and_density():
    runs = grid.expand(sources=["cifar10"], targets=["bone_marrow"], seeds=[0],
                       conditions=["rewind", "scratch"])
    cost = costs.grid_cost(runs, rounds=2, epochs_per_level=10, forward=100, prunable=80)
    # find_tickets on CIFAR-10 (45,000 images after the 10% carve) and a rewind transfer on
    # bone_marrow (522): 3 levels each; scratch: 1 level.
    images = 10 * (3 * 45_000 + 3 * 522 + 522)
    assert cost["runs"] == 3 and cost["levels"] == 7 and cost["images"] == images
    assert cost["training_flops"]["dense"] == 3 * 100 * images
    per_level = [100 - 80 * (1 - 0.8 ** level) for level in range(3)]
    masked = 3 * 10 * (45_000 * sum(per_level) + 522 * sum(per_level) + 522 * per_level[0])
    assert cost["training_flops"]["masked"] == pytest.approx(masked)
    assert costs.train_images("fashion_mnist", 0.05) == 2700
    with pytest.raises(ValueError, match="no known size"):
        costs.train_images("/some/folder")


def test_paper_cost_tables_a_ticket_search_and_the_grid():
    from lth_keras import settings

    preset = settings.from_arguments(settings.FIND_TICKETS, ["--model=lenet_300_100", "--image_size=16",
                                                    "--rounds=2", "--max_epochs=10"])[0]
    runs = grid.expand(sources=["cifar10"], targets=["bone_marrow"], seeds=[0],
                       conditions=["rewind"])
    table = costs.paper_cost(preset, runs, images_per_s=[100, 10], epochs=4)
    # LeNet-300-100 at 16 px: 3 levels of 4 epochs; the search is CIFAR-10's 45,000 images.
    assert "lenet_300_100 at 16 px, 3 levels, 4 epochs per level" in table
    search, whole = table.splitlines()[-2:]
    assert search.startswith("| one ticket search (CIFAR-10, one seed) | 3 | 540,000 |")
    images = 3 * 4 * (45_000 + 522)
    assert whole.startswith(f"| the paper grid (2 runs) | 6 | {images:,} |")
    assert whole.endswith(f"| {images / 100 / 3600:,.1f} | {images / 10 / 3600:,.1f} |")
