"""What the speed benchmarks share: a model exported only to be timed, and a timer.

Speed does not depend on the weights, so the scoring, function and tile
benchmarks time an untrained custom CNN exported in the SavedModel contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def fastest_alternating(rounds: int, *runs: Callable[[], object]) -> list[float]:
    """Each run's fastest time in seconds over ``rounds`` rounds that call them in turn.

    Alternating keeps a slow spell of a shared machine from landing on one side only,
    and the fastest counts because interference only ever slows a run down.
    """
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def export_untrained_cnn(
    models_root: str,
    image_size: int,
    native_size: tuple[int, int] | None = None,
    *,
    tta: bool = False,
    model_name: str = "histo-cnn",
) -> str:
    """Export an untrained ``custom_cnn`` as ``<models_root>/<model_name>/1``.

    Args:
        models_root: folder (or URI) the model root goes under.
        image_size: the network's input size.
        native_size: the training scale to record (tiling needs it), if any.
        tta: test-time augmentation in the graph (8 views per image).
        model_name: the model's folder name.

    Returns:
        The model root URI (``<models_root>/<model_name>``).
    """
    from model_export.export import export_model
    from training.models import build_custom_cnn

    export_model(
        build_custom_cnn(image_size),
        models_root=models_root,
        model_name=model_name,
        class_names=["benign", "malignant"],
        positive_class="malignant",
        threshold=0.5,
        threshold_method="fixed (benchmark, untrained)",
        image_size=image_size,
        architecture="custom_cnn",
        native_size=native_size,
        tta=tta,
    )
    return f"{models_root.rstrip('/')}/{model_name}"
