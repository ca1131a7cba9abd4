"""Weight conversion between the reference PyTorch checkpoints and jepa_jax parameter trees.

``names``: the per-tensor name/layout mapping; ``infer``: what a state dict's shapes say about its
model; ``reference``: whole checkpoints (released ``.pth.tar`` files <-> orbax); ``optimizer``:
Adam's moments <-> the reference's ``torch.optim.AdamW`` state (``--resumable``); ``torch_io``:
the only torch-importing module; ``hf``: Hugging Face transformers' V-JEPA 2 directories, whose
weights ``safetensors_io`` reads and writes (transformers is imported only when they are).
CLI: ``python -m jepa_jax.convert --help``.
"""
from jepa_jax.convert.names import (ConversionError, from_torch, stack_blocks, strip_prefixes,
                                    to_torch, unstack_blocks)
from jepa_jax.convert.hf import export_hf, export_hf_probe, import_hf
from jepa_jax.convert.reference import (convert_probe_state_dict, convert_state_dicts,
                                        export_probe, export_torch, load_probe,
                                        load_torch_checkpoint, load_torch_probe, save_converted,
                                        save_probe, write_torch_checkpoint, write_torch_probe)

__all__ = ["ConversionError", "convert_probe_state_dict", "convert_state_dicts", "export_hf",
           "export_hf_probe", "export_probe", "export_torch", "from_torch", "import_hf",
           "load_probe", "load_torch_checkpoint", "load_torch_probe", "save_converted",
           "save_probe", "stack_blocks", "strip_prefixes", "to_torch", "unstack_blocks",
           "write_torch_checkpoint", "write_torch_probe"]
