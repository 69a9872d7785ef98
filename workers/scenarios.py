"""The named device distributions the benchmarks, the checkpoint report and the tests use.

Each is one `qsae_shared.distributions.Phase`: a class mix and a corruption chain. `full` is the
global distribution (all classes, clean); `classes-*` are devices that see a subset of classes;
`corrupt-*` are devices whose camera degrades every image.
"""

from __future__ import annotations

from qsae_shared.distributions import Corruption, DeviceProfile, Phase

_LONG = 10**9  # a phase that never ends

SCENARIOS: dict[str, Phase] = {
    "full": Phase(_LONG, name="full"),
    "classes-footwear": Phase(_LONG, (0, 0, 0, 0, 0, 1, 0, 1, 0, 1), name="classes-footwear"),
    "classes-tops": Phase(_LONG, (1, 0, 1, 0, 1, 0, 1, 0, 0, 0), name="classes-tops"),
    "classes-trouser-dress-bag": Phase(_LONG, (0, 1, 0, 1, 0, 0, 0, 0, 1, 0),
                                       name="classes-trouser-dress-bag"),
    "corrupt-contrast-noise": Phase(_LONG, corruptions=(Corruption("contrast", 0.5),
                                                        Corruption("noise", 0.2)),
                                    name="corrupt-contrast-noise"),
}

# Corrupted distributions the dense network must stay useful on (>= 80 %), checked at training.
ROBUSTNESS_CHECKS: dict[str, tuple[Corruption, ...]] = {
    "noise-0.2": (Corruption("noise", 0.2),),
    "contrast-0.5": (Corruption("contrast", 0.5),),
    "contrast-0.5+noise-0.2": (Corruption("contrast", 0.5), Corruption("noise", 0.2)),
    "brightness-0.2": (Corruption("brightness", 0.2),),
    "blur-1": (Corruption("blur", 1.0),),
    "rotation-15": (Corruption("rotation", 15.0),),
}


def profile(scenario: str, seed: int = 0, device_id: str | None = None) -> DeviceProfile:
    """A single-phase device profile for a named scenario."""
    if scenario not in SCENARIOS:
        raise KeyError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    return DeviceProfile(device_id or f"bench-{scenario}", (SCENARIOS[scenario],), seed=seed)
