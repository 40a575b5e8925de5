"""The trigger-free backdoor signal: suspected target, synthesized trigger, probe, proxy ASR.

Typical use, with a defense set and no trigger::

    result = estimate_probe(model, defense, SignalConfig(), seed=0)
    proxy_asr(pruned_model, result.probe)  # the environment's ASR estimate

With a known trigger (evaluation only; the probe says ``known_trigger=True``)::

    probe = known_trigger_probe(model.spec.attack, defense.images, defense.labels)
"""

from onp.signal.config import SignalConfig
from onp.signal.perturbation import stamp_perturbation, universal_perturbation
from onp.signal.probe import (
    KNOWN_TRIGGER,
    SYNTHESIZED,
    UNKNOWN_LABEL,
    BackdoorProbe,
    SignalResult,
    concat_probes,
    estimate_probe,
    known_trigger_probe,
    poisoned_probe,
    proxy_asr,
)
from onp.signal.synthesis import SynthesizedTrigger, synthesize_trigger
from onp.signal.target import (
    TargetEstimate,
    UnlearnCheckpoint,
    anomaly_index,
    collapse_shares,
    identify_target,
)

__all__ = [
    "KNOWN_TRIGGER",
    "SYNTHESIZED",
    "UNKNOWN_LABEL",
    "BackdoorProbe",
    "SignalConfig",
    "SignalResult",
    "SynthesizedTrigger",
    "TargetEstimate",
    "UnlearnCheckpoint",
    "anomaly_index",
    "collapse_shares",
    "concat_probes",
    "estimate_probe",
    "identify_target",
    "known_trigger_probe",
    "poisoned_probe",
    "proxy_asr",
    "stamp_perturbation",
    "synthesize_trigger",
    "universal_perturbation",
]
