"""`from_pretrained` that refuses weights which do not fit the model. diffusers' ModelMixin only logs
a warning for missing or unexpected keys and leaves the missing weights at their random
initialisation, so a checkpoint of another layout (an older lcgen's residual block without biases,
a prior saved as a tokenizer) would load and silently produce noise."""
from __future__ import annotations

SHOWN_KEYS = 6  # keys named in the error; the count says how many more


class StrictLoadingMixin:
    """Put before ModelMixin in the bases: `from_pretrained` raises a ValueError naming the keys
    when the saved weights and the model's differ (output_loading_info=True still returns the info)."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = []
        for key, what in (("missing_keys", "missing from the checkpoint"), ("unexpected_keys", "not in the model")):
            names = sorted(info.get(key) or [])
            if names:
                more = f" and {len(names) - SHOWN_KEYS} more" if len(names) > SHOWN_KEYS else ""
                problems.append(f"{len(names)} weights {what} ({', '.join(names[:SHOWN_KEYS])}{more})")
        if problems:
            where = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise ValueError(f"{where!s} does not hold {cls.__name__} weights for its config: {'; '.join(problems)}. "
                             "A checkpoint saved by an older lcgen with another layer layout (for example the "
                             "VQ-VAE residual block before it gained the official code's biases) must be "
                             "retrained or converted")
        return (model, info) if want_info else model
