"""Stage 1, extraction: real images/audio/text -> paired embeddings in the store.

Encoders (CLIP, CLAP), data sources, prompt sets, the resumable embedding cache and the
extraction driver. Optional: the default (synthetic) run never imports this package, and
the encoder libraries are imported lazily, only when an encoder is built."""
