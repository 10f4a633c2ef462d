"""The vocabulary of modalities, spelled once: what a record stores, what a model reads.

A record stores media (MEDIA) and annotations (captions, labels): together its
PARTS, the keys of a split's "composition" and "lacking" in metadata.json. A
task reads model inputs (INPUTS): a video's frames, an image, an audio track
as a waveform or a log-mel spectrogram, text, a label. NEEDS says which stored
part each input is made from, so a loader knows which records a task can use.
The model (impax.model, which imports nothing of impax) names the same inputs
in `model/embed.MODALITIES`; a test holds the two together.
"""

MEDIA = ("video", "audio", "image")
PARTS = ("video", "image", "audio", "captions", "labels")  # Composition.has answers for each

INPUTS = ("video", "image", "waveform", "spectrogram", "text", "label")
ENCODED = ("image", "video", "spectrogram", "waveform", "text")  # inputs the encoder embeds
VISION = ("image", "video")  # uint8 pixels until they reach the accelerator
AUDIO = ("waveform", "spectrogram")

# The stored part each input is made from. Text comes from captions, or from
# label names through a prompt where a record has no caption.
NEEDS = {"video": "video", "image": "image", "waveform": "audio", "spectrogram": "audio",
         "text": "captions", "label": "labels"}
