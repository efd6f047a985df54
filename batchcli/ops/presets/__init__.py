"""Built-in looks for `preset NAME`: plain parameter sets for the one grading engine in
batchcli.ops.color (the same keys a user's look.toml may hold)."""

from __future__ import annotations

BUILTIN: dict[str, dict] = {
    "warm": {
        "about": "golden-hour warmth: warmer white balance, a touch more colour",
        "temperature": 28, "tint": 4, "saturation": 8, "exposure": 0.05,
    },
    "cool": {
        "about": "crisp blue-leaning white balance",
        "temperature": -28, "tint": -3, "saturation": -4,
    },
    "mono": {
        "about": "neutral black and white with a little extra contrast",
        "saturation": -100, "contrast": 12,
    },
    "vintage": {
        "about": "faded warm print: lifted blacks, soft highlights, muted colour, vignette",
        "temperature": 18, "saturation": -30, "contrast": -8,
        "curves": {"rgb": [[0, 30], [128, 130], [255, 232]], "b": [[0, 22], [255, 228]]},
        "vignette": 35,
    },
    "vivid": {
        "about": "punchy colour and contrast",
        "saturation": 35, "contrast": 15, "gamma": 1.03,
    },
    "fade": {
        "about": "matte look: lifted blacks, lower contrast and saturation",
        "contrast": -15, "saturation": -20, "curves": [[0, 42], [64, 78], [255, 245]],
    },
}
