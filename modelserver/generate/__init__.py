"""Images for the next block: active-learning picks, maximizing (pool and synthesized),
adversarial, smooth- and dot stimuli, each with a provenance record. See docs/generation.md."""

from modelserver.generate.models import CompactStack, Ensemble, Generated, MemberEnsemble, Pick, ResponseModel

__all__ = ["CompactStack", "Ensemble", "Generated", "MemberEnsemble", "Pick", "ResponseModel"]
