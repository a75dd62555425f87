"""VideoCrafter2: our UNet implementation, its checkpoint formats and T2V-Turbo's released files.

- :mod:`.unet`: ``VC2UNet`` (key-for-key compatible with VC2's ``model.ckpt`` and T2V-Turbo's UNets);
- :mod:`.lora_format`: the released ``unet_lora.pt`` list-of-tensors LoRA format;
- :mod:`.checkpoint`: ``model.ckpt`` splitting, the VAE key mapping, the OpenCLIP text encoder,
  converted safetensors folders and the released student files.
"""

from t2v_turbo.models.vc2.unet import VC2_UNET_CONFIG, VC2UNet, timestep_embedding

__all__ = ["VC2UNet", "VC2_UNET_CONFIG", "timestep_embedding"]
