"""The built-in model presets: tiny random models built from a config (tests, smoke runs). Import-light, so the
config schema can list them; trainers/models.py builds and caches them."""

PRESETS = {
    # Small enough for CPU tests, big enough for bitsandbytes' 64-value NF4 blocks.
    "tiny-llama": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, rms_norm_eps=1e-6,
    ),
}
