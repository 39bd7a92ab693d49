"""Safe loading of tensor files (`.pt` shards, checkpoints, models): the project's one
`torch.load`, which never runs code a file carries."""

from sequifier.errors import SequifierError


def load_tensor_file(path: str, what: str, fix: str, mmap: bool = False):
    """`torch.load` of tensors and plain containers; never runs code the file carries.

    `weights_only=True` is explicit so that TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the
    environment cannot turn unpickling of arbitrary objects back on. A file that cannot
    be read (truncated, foreign, crafted) is one line naming it (`what` 'PATH') and `fix`.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001  (zip, pickle, EOF and OS errors of many types)
        text = " ".join(str(e).split())
        # torch's refusals come with several lines of advice: say what they mean
        if text.startswith("Weights only load failed") and "GLOBAL" in text:
            reason = "it holds Python objects other than tensors, which are not loaded as that could run code"
        elif text.startswith("Weights only load failed"):
            reason = "not a file of tensors written by torch.save"
        else:
            reason = text[:160] or type(e).__name__
    raise SequifierError(f"{what} '{path}' cannot be read ({reason}); {fix}")
