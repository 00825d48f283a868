"""Stage 5, analysis: metrics of a trained dictionary (:mod:`.metrics`), the per-model
analysis bundle (:mod:`.analysis`), embedding geometry (:mod:`.geometry`), steering
(:mod:`.steering`) and concept naming (:mod:`.concepts`)."""
