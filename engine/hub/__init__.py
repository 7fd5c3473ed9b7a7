"""The Hugging Face Hub: fetch a model's config, download its weights, push a result back.

Everything goes through `huggingface_hub` (imported inside the functions that use it, never at
module import): its cache layout, its token handling (`HF_TOKEN`, the token file) and its
settings (`HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE`) are the user's, so every
other tool finds what ftui downloaded. A shared module: it imports nothing of engine's stages.

  settings   where the hub is, whether ftui may reach it, whether a token is configured
  errors     the library's exceptions as one FtuiError each (gated, 401, 404, revision, offline)
  files      which of a repo's files a fine-tune needs (safetensors over .bin, no gguf/onnx/...)
  download   config-only fetches (model resolution) and resumable weight downloads with progress
  push       `upload_folder` of an exported adapter or model
"""
